import { ApiError, AppConfig, RateLimiter, type LimitDecision, type ModelEntry, type TokenRecord } from '@app/common';
import { Injectable } from '@nestjs/common';
import type Redis from 'ioredis';
import { InjectRedis } from '../redis/redis.tokens';

const LABELS = {
  requests: 'requests per minute (RPM)',
  input_tokens: 'input tokens per minute (TPM)',
  output_tokens: 'output tokens per minute (TPM)',
} as const;

/** Enforces a token's per-minute limits; tokens without limits cost no Redis round trip. */
@Injectable()
export class LimitsService {
  private readonly limiter: RateLimiter;

  constructor(@InjectRedis() redis: Redis, config: AppConfig) {
    this.limiter = new RateLimiter(redis, config.names);
  }

  /**
   * Reserves one request (weight 1 / the model's multiplier). Returns the `x-ratelimit-*`
   * headers for the response; throws 429 with them when the token is over a limit.
   */
  async enforce(token: TokenRecord, model: ModelEntry, now: number): Promise<Record<string, string>> {
    if (!RateLimiter.hasLimits(token)) {
      return {};
    }
    let decision: LimitDecision;
    try {
      decision = await this.limiter.check(token, 1 / model.requestLimitMultiplier, now);
    } catch {
      throw ApiError.datastoreUnavailable();
    }
    if (!decision.allowed && decision.reason !== undefined) {
      const limit =
        decision.reason === 'requests'
          ? token.requests_per_minute
          : decision.reason === 'input_tokens'
            ? token.input_tokens_per_minute
            : token.output_tokens_per_minute;
      throw new RateLimitError(
        `Rate limit reached for ${LABELS[decision.reason]} on this API key: limit ${limit}. Please try again in ${(decision.retryAfterMs / 1000).toFixed(1)}s.`,
        decision.reason === 'requests' ? 'requests' : 'tokens',
        decision.retryAfterMs,
        decision.headers,
      );
    }
    return decision.headers;
  }
}

/** A 429 that also carries the rate-limit headers. */
export class RateLimitError extends ApiError {
  constructor(
    message: string,
    type: string,
    retryAfterMs: number,
    readonly headers: Record<string, string>,
  ) {
    super(429, message, type, null, 'rate_limit_exceeded', Math.max(retryAfterMs, 1));
  }
}
