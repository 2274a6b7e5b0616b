import { ApiError, Clock, hashToken, keyPreview, tokenState, TokenStore, type TokenRecord } from '@app/common';
import { Injectable } from '@nestjs/common';

const CACHE_TTL_MS = 1_000;
const CACHE_MAX = 50_000;

/**
 * Resolves bearer keys to token records. Records are cached in process for one second:
 * most requests then cost no Redis round trip for auth, and a revocation still reaches
 * every gateway instance within that second.
 */
@Injectable()
export class TokenAuthService {
  private readonly cache = new Map<string, { token: TokenRecord | undefined; until: number }>();

  constructor(
    private readonly store: TokenStore,
    private readonly clock: Clock,
  ) {}

  /** The active token for a key; throws 401 ApiError for unknown, revoked or expired keys. */
  async authenticate(key: string): Promise<TokenRecord> {
    const now = this.clock.now();
    const hash = hashToken(key);
    let entry = this.cache.get(hash);
    if (entry === undefined || entry.until <= now) {
      entry = { token: await this.lookup(key), until: now + CACHE_TTL_MS };
      if (this.cache.size >= CACHE_MAX) {
        this.cache.clear();
      }
      this.cache.set(hash, entry);
    }
    const token = entry.token;
    const state = token === undefined ? 'unknown' : tokenState(token, now);
    if (token === undefined || state !== 'active') {
      throw new ApiError(
        401,
        `${state === 'unknown' ? 'Incorrect' : state === 'revoked' ? 'Revoked' : 'Expired'} API key provided: ${keyPreview(key)}.`,
        'invalid_request_error',
        null,
        'invalid_api_key',
      );
    }
    return token;
  }

  private async lookup(key: string): Promise<TokenRecord | undefined> {
    try {
      return await this.store.findByKey(key);
    } catch {
      throw ApiError.datastoreUnavailable();
    }
  }
}
