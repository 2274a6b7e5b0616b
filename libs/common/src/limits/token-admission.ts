import type { RedisClient } from '../redis/redis-factory';
import type { RedisNames } from '../names';
import type { TokenRecord } from '../tokens/token-record';
import { ADMISSION_LUA } from './admission.lua';

export type LimitReason = 'requests' | 'input_tokens' | 'output_tokens' | 'concurrency';

export interface LimitDecision {
  allowed: boolean;
  reason?: LimitReason;
  /** When a refused request would pass. */
  retryAfterMs: number;
  /** `x-ratelimit-*` headers, as OpenAI sends them, for every response to a limited token. */
  headers: Record<string, string>;
  /** Admitted: the token's requests for the model in flight, this one included (its turn); 0 when not counted. */
  turn: number;
}

const REASONS: Record<number, LimitReason> = {
  1: 'requests',
  2: 'input_tokens',
  3: 'output_tokens',
  4: 'concurrency',
};

/**
 * How long a concurrency lease lives without renewal. The gateway holding a request renews
 * its leases every third of this, so only a gateway that died lets one lapse: its token's
 * slots are back within this time.
 */
export const CONCURRENCY_LEASE_MS = 20_000;
/** A slot frees when some request of the token ends: no time can be computed, so retry soon. */
const CONCURRENCY_RETRY_MS = 1_000;

type AdmitCommand = (
  limiterKey: string,
  leaseKey: string,
  modelLeaseKey: string,
  now: number,
  weight: number,
  rpm: number,
  itpm: number,
  otpm: number,
  maxParallel: number,
  leaseMs: number,
  rid: string,
  countTurn: '1' | '0',
) => Promise<[number, string, number, number, number, number, number, number, number, number]>;

/** One request asking to be admitted. */
export interface AdmissionRequest {
  rid: string;
  /**
   * The canonical model name when the model has a capacity: its turn is then counted per
   * token and model; null for an unlimited model, which needs no turn.
   */
  model: string | null;
  /** 1 / the model's request_limit_multiplier. */
  weight: number;
  maxParallel: number;
  now: number;
}

/**
 * The KEYS of one admission (ADMISSION_LUA): the token's limiter and leases, all tagged with
 * the token id, so that on a cluster the script stays in the token's slot. The model's lease
 * key is declared either way (a script names its keys); it is unused without a model.
 */
export function admissionKeys(names: RedisNames, tokenId: string, model: string | null): [string, string, string] {
  return [names.limiter(tokenId), names.tokenLeases(tokenId), names.tokenModelLeases(tokenId, model ?? '')];
}

/** Go-style durations, as OpenAI's reset headers use: "1s", "6m0s", "250ms". */
export function goDuration(ms: number): string {
  if (ms < 1000) {
    return `${Math.max(0, Math.ceil(ms))}ms`;
  }
  const s = Math.ceil(ms / 1000);
  return s < 60 ? `${s}s` : `${Math.floor(s / 60)}m${s % 60}s`;
}

/**
 * Admission of a token's request across every gateway, in one EVALSHA: its concurrency
 * lease (max_parallel_requests, waiting plus running) and its limits over a sliding
 * 60-second window, checked and reserved atomically, so concurrent requests on any number
 * of gateways cannot overshoot either. Token limits count real usage, added by the workers
 * after each job (UsageStore.record, into the same hash's i:/o: buckets).
 */
export class TokenAdmission {
  private readonly admit: AdmitCommand;

  constructor(
    private readonly redis: RedisClient,
    private readonly names: RedisNames,
  ) {
    redis.defineCommand('aqueductAdmit', { numberOfKeys: 3, lua: ADMISSION_LUA });
    this.admit = (redis as unknown as { aqueductAdmit: AdmitCommand }).aqueductAdmit.bind(redis);
  }

  /** Checks and, when allowed, reserves one request: a lease and its rate-limit weight. */
  async check(token: TokenRecord, req: AdmissionRequest): Promise<LimitDecision> {
    const rpm = token.requests_per_minute ?? -1;
    const itpm = token.input_tokens_per_minute ?? -1;
    const otpm = token.output_tokens_per_minute ?? -1;
    const [denied, usedR, usedI, usedO, retry, resetR, resetI, resetO, , turn] = await this.admit(
      ...admissionKeys(this.names, token.id, req.model),
      req.now,
      req.weight,
      rpm,
      itpm,
      otpm,
      req.maxParallel,
      CONCURRENCY_LEASE_MS,
      req.rid,
      req.model === null ? '0' : '1',
    );
    const headers: Record<string, string> = {};
    if (rpm >= 0) {
      headers['x-ratelimit-limit-requests'] = String(rpm);
      headers['x-ratelimit-remaining-requests'] = String(Math.max(0, Math.floor(rpm - Number(usedR) + 1e-9)));
      headers['x-ratelimit-reset-requests'] = goDuration(resetR);
    }
    const tokenBudgets = [
      { name: 'input', limit: itpm, used: usedI, reset: resetI },
      { name: 'output', limit: otpm, used: usedO, reset: resetO },
    ].filter((b) => b.limit >= 0);
    for (const b of tokenBudgets) {
      headers[`x-ratelimit-limit-${b.name}-tokens`] = String(b.limit);
      headers[`x-ratelimit-remaining-${b.name}-tokens`] = String(Math.max(0, b.limit - b.used));
      headers[`x-ratelimit-reset-${b.name}-tokens`] = goDuration(b.reset);
    }
    // OpenAI's single tokens budget: report whichever of ours is closest to exhaustion.
    const binding = tokenBudgets.sort((a, b) => (a.limit - a.used) / a.limit - (b.limit - b.used) / b.limit)[0];
    if (binding !== undefined) {
      headers['x-ratelimit-limit-tokens'] = String(binding.limit);
      headers['x-ratelimit-remaining-tokens'] = String(Math.max(0, binding.limit - binding.used));
      headers['x-ratelimit-reset-tokens'] = goDuration(binding.reset);
    }
    const reason = REASONS[denied];
    return {
      allowed: denied === 0,
      reason,
      retryAfterMs: reason === 'concurrency' ? CONCURRENCY_RETRY_MS : retry,
      headers,
      turn,
    };
  }

  /**
   * Extends the leases of requests still held, per token (request id → the model whose turn
   * it holds, or null), in one pipeline for all of them; on a cluster, in one pipeline per
   * token: a pipeline must stay on one node, and each token's leases carry its own hash tag.
   */
  async renew(byToken: ReadonlyMap<string, ReadonlyMap<string, string | null>>, now: number): Promise<void> {
    if (byToken.size === 0) {
      return;
    }
    const expiry = now + CONCURRENCY_LEASE_MS;
    const pipelines = [this.redis.pipeline()];
    for (const [tokenId, rids] of byToken) {
      if (this.names.cluster && pipelines.length < byToken.size) {
        pipelines.push(this.redis.pipeline());
      }
      const p = pipelines.at(-1)!;
      const key = this.names.tokenLeases(tokenId);
      const models = new Set<string>();
      for (const [rid, model] of rids) {
        p.zadd(key, 'XX', expiry, rid);
        if (model !== null) {
          p.zadd(this.names.tokenModelLeases(tokenId, model), 'XX', expiry, rid);
          models.add(model);
        }
      }
      p.pexpire(key, CONCURRENCY_LEASE_MS * 2);
      for (const model of models) {
        p.pexpire(this.names.tokenModelLeases(tokenId, model), CONCURRENCY_LEASE_MS * 2);
      }
    }
    await Promise.all(pipelines.map((p) => p.exec()));
  }

  /** Gives a request's slot back (and its turn, when it counted one: both in one round trip). */
  async release(tokenId: string, model: string | null, rid: string): Promise<void> {
    if (model === null) {
      await this.redis.zrem(this.names.tokenLeases(tokenId), rid);
      return;
    }
    await this.redis
      .multi()
      .zrem(this.names.tokenLeases(tokenId), rid)
      .zrem(this.names.tokenModelLeases(tokenId, model), rid)
      .exec();
  }
}
