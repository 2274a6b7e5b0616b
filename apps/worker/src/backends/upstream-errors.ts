import { BackendError } from './backend.error';

/**
 * Turns everything an OpenAI-compatible upstream can fail with into a {@link BackendError}
 * with the status and OpenAI error object our client must see. The rule of thumb: problems
 * with the client's request pass through (400/422, no failover); problems with the upstream
 * or with our configuration of it become 5xx (or 429) and may fail over to another deployment.
 */

/** Headers as undici returns them. */
export type UpstreamHeaders = Record<string, string | string[] | undefined>;

/** The `error` object of an upstream body or stream frame, loosely typed: vLLM sends `code` as an int. */
interface UpstreamErrorFields {
  message?: unknown;
  type?: unknown;
  param?: unknown;
  code?: unknown;
}

const RATE_LIMIT_MESSAGE = 'the upstream is rate limited, please retry later';

export function upstreamTimeout(): BackendError {
  // Nothing can finish in time any more, so another deployment would not help either.
  return new BackendError(
    504,
    'the request timed out waiting for the upstream',
    'server_error',
    false,
    null,
    'timeout',
  );
}

export function upstreamStalled(idleMs: number): BackendError {
  return new BackendError(504, `upstream stalled: no data for ${idleMs} ms`, 'server_error', true, null, 'timeout');
}

/** Failures where no connection to the upstream could be made at all. */
const CONNECT_FAILURES = new Set([
  'ECONNREFUSED',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'ENETUNREACH',
  'UND_ERR_CONNECT_TIMEOUT',
]);

/**
 * Before any response: 503 when the upstream could not be reached (every deployment
 * down is "unavailable"), 502 when it was reached and then broke the exchange (reset,
 * socket closed mid-request): that is a protocol failure, not unavailability.
 */
export function upstreamUnavailable(cause: unknown): BackendError {
  // Only the error code (ECONNREFUSED, ENOTFOUND…): undici messages can carry host details.
  const code = errorCode(cause);
  const suffix = code === undefined ? '' : ` (${code})`;
  return code !== undefined && !CONNECT_FAILURES.has(code)
    ? new BackendError(502, `upstream closed the connection before answering${suffix}`, 'server_error', true)
    : new BackendError(503, `upstream unavailable${suffix}`, 'server_error', true);
}

export function upstreamInvalid(detail: string): BackendError {
  return new BackendError(502, `upstream sent an invalid response: ${detail}`, 'server_error', true);
}

export function upstreamProtocolError(detail: string): BackendError {
  return new BackendError(502, `upstream stream protocol error: ${detail}`, 'server_error', true);
}

/** vLLM's `finish_reason` "error"/"abort": the engine failed or dropped the request. */
export function upstreamGenerationFailed(reason: string): BackendError {
  return new BackendError(
    502,
    `the upstream failed while generating (finish_reason "${reason}")`,
    'server_error',
    true,
  );
}

export function upstreamTerminated(): BackendError {
  return new BackendError(502, 'upstream stream terminated unexpectedly', 'server_error', true);
}

/** The non-stream counterpart: the socket went away in the middle of the response body. */
export function upstreamConnectionLost(): BackendError {
  return new BackendError(502, 'upstream closed the connection before the response was complete', 'server_error', true);
}

/** Maps a non-2xx HTTP answer; `body` is the parsed JSON body, or undefined if it was not JSON. */
export function fromUpstreamStatus(status: number, body: unknown, headers: UpstreamHeaders): BackendError {
  return fromStatusAndFields(status, errorFields(body), retryAfterMs(headers));
}

/**
 * Maps an in-band `data: {"error":…}` frame (vLLM, llama.cpp) or a 200 body holding an error.
 * vLLM puts the HTTP status in `code` as an int; otherwise the type names the status.
 */
export function fromErrorFrame(error: unknown): BackendError {
  const fields: UpstreamErrorFields = isRecord(error) ? error : {};
  return fromStatusAndFields(statusOfFrame(fields), fields, undefined);
}

function fromStatusAndFields(status: number, e: UpstreamErrorFields, retryAfter: number | undefined): BackendError {
  if (status === 400 || status === 422) {
    // The request itself is at fault; the upstream's explanation is what the client needs.
    const message = typeof e.message === 'string' && e.message !== '' ? e.message : 'the upstream rejected the request';
    return new BackendError(
      status,
      message,
      'invalid_request_error',
      false,
      stringOrNull(e.param),
      stringOrNull(e.code),
    );
  }
  if (status === 401 || status === 403) {
    // Our key, not the client's: never a 401 to the client, and alert-worthy.
    const message = `upstream refused the gateway's credentials (status ${status})`;
    return new BackendError(502, message, 'server_error', true);
  }
  if (status === 404) {
    return new BackendError(502, 'upstream model not found', 'server_error', true);
  }
  if (status === 429) {
    return new BackendError(429, RATE_LIMIT_MESSAGE, 'requests', true, null, 'rate_limit_exceeded', retryAfter);
  }
  if (status >= 500) {
    return new BackendError(
      502,
      `the upstream failed (status ${status})`,
      'server_error',
      true,
      null,
      null,
      retryAfter,
    );
  }
  // Anything else (3xx, 408, 409, 413…) is not something the client can fix from here.
  return new BackendError(502, `the upstream answered with unexpected status ${status}`, 'server_error', true);
}

const FRAME_TYPE_STATUS: Record<string, number> = {
  invalid_request_error: 400,
  BadRequestError: 400,
  exceed_context_size_error: 400,
  NotFoundError: 404,
  not_found_error: 404,
  rate_limit_error: 429,
  requests: 429,
  tokens: 429,
  GatewayTimeout: 504,
};

function statusOfFrame(e: UpstreamErrorFields): number {
  if (typeof e.code === 'number' && Number.isInteger(e.code) && e.code >= 400 && e.code <= 599) {
    return e.code;
  }
  if (typeof e.code === 'string' && /^[45]\d\d$/.test(e.code)) {
    return Number(e.code);
  }
  return (typeof e.type === 'string' ? FRAME_TYPE_STATUS[e.type] : undefined) ?? 500;
}

function errorFields(body: unknown): UpstreamErrorFields {
  if (!isRecord(body)) {
    return {};
  }
  if (isRecord(body.error)) {
    return body.error;
  }
  // Ollama's native API and some proxies send {"error": "text"}; FastAPI 422s send {"detail": …}.
  if (typeof body.error === 'string') {
    return { message: body.error };
  }
  if (body.detail !== undefined) {
    const detail = typeof body.detail === 'string' ? body.detail : JSON.stringify(body.detail);
    return { message: detail.length > 1000 ? `${detail.slice(0, 1000)}…` : detail };
  }
  return {};
}

/** OpenAI error codes are strings; vLLM's int status codes mean nothing to a client. */
function stringOrNull(v: unknown): string | null {
  return typeof v === 'string' && v !== '' ? v : null;
}

/** `retry-after-ms` (float ms) wins over `retry-after` (seconds or an HTTP date), as in openai-node. */
export function retryAfterMs(headers: UpstreamHeaders, now = Date.now()): number | undefined {
  const ms = Number(firstHeader(headers['retry-after-ms']));
  if (Number.isFinite(ms) && ms >= 0) {
    return Math.ceil(ms);
  }
  const raw = firstHeader(headers['retry-after']);
  if (raw === undefined || raw.trim() === '') {
    return undefined;
  }
  const seconds = Number(raw);
  if (Number.isFinite(seconds) && seconds >= 0) {
    return Math.ceil(seconds * 1000);
  }
  const date = Date.parse(raw);
  return Number.isNaN(date) ? undefined : Math.max(0, date - now);
}

function firstHeader(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v[0] : v;
}

/** The errno-style code of an error or of its causes (undici wraps socket errors). */
function errorCode(err: unknown, depth = 0): string | undefined {
  if (!isRecord(err) || depth > 3) {
    return undefined;
  }
  return typeof err.code === 'string' ? err.code : errorCode(err.cause, depth + 1);
}

/**
 * Removes the upstream key from an error, and anything that looks like a bearer token or
 * an OpenAI-style key: upstreams echo keys back ("Incorrect API key provided: sk-…").
 */
export function scrubSecrets(err: BackendError, secret: string | undefined): BackendError {
  const message = scrub(err.message, secret);
  const param = err.param === null ? null : scrub(err.param, secret);
  const code = err.code === null ? null : scrub(err.code, secret);
  if (message === err.message && param === err.param && code === err.code) {
    return err;
  }
  return new BackendError(err.status, message, err.type, err.failover, param, code, err.retryAfterMs);
}

function scrub(text: string, secret: string | undefined): string {
  let out = secret !== undefined && secret !== '' ? text.split(secret).join('[redacted]') : text;
  out = out.replace(/\b(Bearer\s+)\S+/gi, '$1[redacted]');
  return out.replace(/\bsk-[A-Za-z0-9_-]{6,}/g, 'sk-[redacted]');
}

export function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
