import { ApiError, RateLimitError } from '@app/common';
import type { Response } from 'express';

/** Writes an OpenAI error object with its status (and Retry-After, rate-limit headers when it has them). */
export function sendApiError(res: Response, err: ApiError): void {
  if (err instanceof RateLimitError) {
    for (const [name, value] of Object.entries(err.headers)) {
      res.setHeader(name, value);
    }
  }
  if (err.retryAfterMs !== undefined) {
    res.setHeader('retry-after', String(Math.max(1, Math.ceil(err.retryAfterMs / 1000))));
    res.setHeader('retry-after-ms', String(Math.max(0, Math.round(err.retryAfterMs))));
  }
  res.status(err.status).json(err.body);
}

const TYPE_BY_STATUS: Record<number, string> = {
  401: 'invalid_request_error',
  403: 'permission_error',
  404: 'invalid_request_error',
  405: 'invalid_request_error',
  413: 'invalid_request_error',
  415: 'invalid_request_error',
  422: 'invalid_request_error',
  429: 'rate_limit_error',
};

export function errorTypeForStatus(status: number): string {
  return TYPE_BY_STATUS[status] ?? (status >= 500 ? 'server_error' : 'invalid_request_error');
}
