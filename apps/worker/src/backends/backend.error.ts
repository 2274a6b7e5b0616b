import { ApiError } from '@app/common';

/**
 * An {@link ApiError} raised by a backend. `failover` says whether trying another
 * deployment of the same model could help (connection refused, upstream 5xx/429, bad
 * upstream key) as opposed to a problem with the request itself (upstream 400/422).
 */
export class BackendError extends ApiError {
  constructor(
    status: number,
    message: string,
    type: string,
    readonly failover: boolean,
    param: string | null = null,
    code: string | null = null,
    retryAfterMs?: number,
  ) {
    super(status, message, type, param, code, retryAfterMs);
  }
}
