import { createHash, randomBytes } from 'node:crypto';
import type { RedisClient } from '../redis/redis-factory';
import type { RedisNames } from '../names';
import { normalizeToken, type TokenCreateOptions, type TokenRecord } from './token-record';

export const TOKEN_PREFIX = 'sk-aq-';
/** `sk-aq-` + 43 base64url characters (32 random bytes). */
const TOKEN_PATTERN = /^sk-aq-[A-Za-z0-9_-]{43}$/;

export function hashToken(key: string): string {
  return createHash('sha256').update(key).digest('hex');
}

/** Enough of a key to recognise it, never enough to use it: `sk-aq-...abcd`. */
export function keyPreview(key: string): string {
  return key.length <= 10 ? '***' : `${key.slice(0, TOKEN_PREFIX.length)}...${key.slice(-4)}`;
}

export function isWellFormedToken(key: string): boolean {
  return TOKEN_PATTERN.test(key);
}

/**
 * Tokens in Redis: `tokensByHash` maps sha256(key) → record, so authentication is a
 * single HGET; `tokensById` maps id → hash for listing and revocation.
 */
export class TokenStore {
  constructor(
    private readonly redis: RedisClient,
    private readonly names: RedisNames,
    private readonly now: () => number = Date.now,
  ) {}

  async create(opts: TokenCreateOptions): Promise<{ key: string; token: TokenRecord }> {
    const key = TOKEN_PREFIX + randomBytes(32).toString('base64url');
    const hash = hashToken(key);
    const created = Math.floor(this.now() / 1000);
    const token: TokenRecord = {
      id: `tok_${randomBytes(8).toString('hex')}`,
      name: opts.name,
      preview: keyPreview(key),
      created_at: created,
      expires_at: opts.expires_in == null ? null : created + Math.max(1, Math.round(opts.expires_in)),
      models: opts.models && opts.models.length > 0 ? [...opts.models] : null,
      requests_per_minute: opts.requests_per_minute ?? null,
      input_tokens_per_minute: opts.input_tokens_per_minute ?? null,
      output_tokens_per_minute: opts.output_tokens_per_minute ?? null,
      max_parallel_requests: opts.max_parallel_requests ?? null,
      priority: opts.priority ?? 'normal',
      revoked: false,
    };
    await this.redis
      .multi()
      .hset(this.names.tokensByHash, hash, JSON.stringify(token))
      .hset(this.names.tokensById, token.id, hash)
      .exec();
    return { key, token };
  }

  /** The record for a presented key, or undefined when unknown (state is the caller's call). */
  async findByKey(key: string): Promise<TokenRecord | undefined> {
    if (!isWellFormedToken(key)) {
      return undefined;
    }
    const raw = await this.redis.hget(this.names.tokensByHash, hashToken(key));
    return raw === null ? undefined : normalizeToken(JSON.parse(raw) as TokenRecord);
  }

  async list(): Promise<TokenRecord[]> {
    const all = await this.redis.hgetall(this.names.tokensByHash);
    return Object.values(all)
      .map((raw) => normalizeToken(JSON.parse(raw) as TokenRecord))
      .sort((a, b) => a.created_at - b.created_at || a.id.localeCompare(b.id));
  }

  /** Marks a token revoked; false when the id is unknown. Idempotent. */
  async revoke(id: string): Promise<boolean> {
    const hash = await this.redis.hget(this.names.tokensById, id);
    if (hash === null) {
      return false;
    }
    const raw = await this.redis.hget(this.names.tokensByHash, hash);
    if (raw === null) {
      return false;
    }
    const token = { ...normalizeToken(JSON.parse(raw) as TokenRecord), revoked: true };
    await this.redis.hset(this.names.tokensByHash, hash, JSON.stringify(token));
    return true;
  }
}
