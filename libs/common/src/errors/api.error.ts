import type { OpenAIErrorBody } from '../contracts/openai';

/**
 * An error with the HTTP status and OpenAI error object the client must see. Thrown by
 * the gateway's services and carried from workers to the gateway inside relay messages.
 */
export class ApiError extends Error {
  override readonly name = 'ApiError';

  constructor(
    readonly status: number,
    message: string,
    readonly type: string,
    readonly param: string | null = null,
    readonly code: string | null = null,
    /** Milliseconds a client should wait before retrying (Retry-After). */
    readonly retryAfterMs?: number,
  ) {
    super(message);
  }

  get body(): { error: OpenAIErrorBody } {
    return { error: { message: this.message, type: this.type, param: this.param, code: this.code } };
  }

  static fromBody(status: number, e: OpenAIErrorBody, retryAfterMs?: number): ApiError {
    return new ApiError(status, e.message, e.type, e.param, e.code, retryAfterMs);
  }

  static invalid(message: string, param: string | null = null, code: string | null = null): ApiError {
    return new ApiError(400, message, 'invalid_request_error', param, code);
  }

  static server(status: number, message: string, code: string | null = null, retryAfterMs?: number): ApiError {
    return new ApiError(status, message, 'server_error', null, code, retryAfterMs);
  }

  /** No deployment of the model had capacity within the request's wait limit (see scheduling). */
  static queueTimeout(waitedMs: number, retryAfterMs: number): ApiError {
    return ApiError.server(
      503,
      `No capacity for this model became free within ${Math.round(waitedMs / 100) / 10} s. Please retry later.`,
      'queue_timeout',
      retryAfterMs,
    );
  }

  /** 404 for a path that is not a route, as OpenAI words it. */
  static unknownUrl(method: string, path: string): ApiError {
    return new ApiError(
      404,
      `Invalid URL (${method} ${path.slice(0, 200)})`,
      'invalid_request_error',
      null,
      'unknown_url',
    );
  }

  /** 503 when Redis (tokens, limits) does not answer: retryable, with a short Retry-After. */
  static datastoreUnavailable(): ApiError {
    return ApiError.server(503, 'The gateway cannot reach its datastore. Please retry shortly.', null, 1_000);
  }
}
