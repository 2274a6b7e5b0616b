import { ApiError } from './api.error';

/** A 429 that also carries the rate-limit headers (`x-ratelimit-*`), which the error response sends. */
export class RateLimitError extends ApiError {
  constructor(
    message: string,
    type: string,
    retryAfterMs: number,
    readonly headers: Record<string, string>,
    code = 'rate_limit_exceeded',
  ) {
    super(429, message, type, null, code, Math.max(retryAfterMs, 1));
  }
}
