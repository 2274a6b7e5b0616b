import type Redis from 'ioredis';
import type { RedisNames } from '../names';
import type { TokenRecord } from '../tokens/token-record';
import { SLIDING_WINDOW_LUA } from './sliding-window.lua';

export type LimitReason = 'requests' | 'input_tokens' | 'output_tokens';

export interface LimitDecision {
  allowed: boolean;
  reason?: LimitReason;
  /** When a refused request would pass. */
  retryAfterMs: number;
  /** `x-ratelimit-*` headers, as OpenAI sends them, for every response to a limited token. */
  headers: Record<string, string>;
}

const REASONS: Record<number, LimitReason> = { 1: 'requests', 2: 'input_tokens', 3: 'output_tokens' };

type LimitCommand = (
  key: string,
  now: number,
  weight: number,
  rpm: number,
  itpm: number,
  otpm: number,
) => Promise<[number, string, number, number, number, number, number, number]>;

/** Go-style durations, as OpenAI's reset headers use: "1s", "6m0s", "250ms". */
export function goDuration(ms: number): string {
  if (ms < 1000) {
    return `${Math.max(0, Math.ceil(ms))}ms`;
  }
  const s = Math.ceil(ms / 1000);
  return s < 60 ? `${s}s` : `${Math.floor(s / 60)}m${s % 60}s`;
}

/**
 * Per-token limits over a sliding 60-second window, checked and reserved atomically in
 * Redis (one EVALSHA), so concurrent requests on any number of gateways cannot overshoot
 * the request limit. Token limits count real usage, added by the workers after each job
 * (UsageStore.record, into the same hash's i:/o: buckets).
 */
export class RateLimiter {
  private readonly limit: LimitCommand;

  constructor(
    private readonly redis: Redis,
    private readonly names: RedisNames,
  ) {
    redis.defineCommand('aqueductLimit', { numberOfKeys: 1, lua: SLIDING_WINDOW_LUA });
    this.limit = (redis as unknown as { aqueductLimit: LimitCommand }).aqueductLimit.bind(redis);
  }

  static hasLimits(t: TokenRecord): boolean {
    return t.requests_per_minute !== null || t.input_tokens_per_minute !== null || t.output_tokens_per_minute !== null;
  }

  /** Checks and reserves one request costing `weight` (1 / the model's multiplier). */
  async check(token: TokenRecord, weight: number, now: number): Promise<LimitDecision> {
    const rpm = token.requests_per_minute ?? -1;
    const itpm = token.input_tokens_per_minute ?? -1;
    const otpm = token.output_tokens_per_minute ?? -1;
    const [denied, usedR, usedI, usedO, retry, resetR, resetI, resetO] = await this.limit(
      this.names.limiter(token.id),
      now,
      weight,
      rpm,
      itpm,
      otpm,
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
    return { allowed: denied === 0, reason: REASONS[denied], retryAfterMs: retry, headers };
  }
}
