import { type APIError, BadRequestError, InternalServerError, RateLimitError } from 'openai';

/**
 * Upstream failures whose mapping does not depend on the operation: the completions and the
 * chat contract suites both run every row, each with its own request and SDK call, plus the
 * rows that name operation-specific fields (`prompt`, `messages`) or models of their own.
 */

export type ErrorClass = new (...args: never[]) => APIError;

export interface UpstreamFailureRow {
  name: string;
  /** A model of the suite's router config; `up` when unset. */
  model?: string;
  /** Fake-upstream knobs merged into the request body. */
  knobs?: Record<string, unknown>;
  /** One exact status, or the acceptable ones. */
  status: number | number[];
  cls: ErrorClass;
  type?: string;
  param?: string | null;
  code?: string | null;
  message: RegExp;
  retryAfter?: boolean;
  /** Stream-only rows (a knob the non-stream path cannot express). */
  streamOnly?: boolean;
}

/** An upstream that answers nonsense: the gateway's 502 (500 accepted, as OpenAI's SDKs retry both). */
export const BAD_GATEWAY = [500, 502];

const badGateway = (name: string, fail: string, streamOnly?: true): UpstreamFailureRow => ({
  name,
  knobs: { fake_fail: fail },
  status: BAD_GATEWAY,
  cls: InternalServerError,
  type: 'server_error',
  message: /upstream/,
  ...(streamOnly && { streamOnly }),
});

/** Needs the models `up`, `up-unauthorized` (upstream model `unauthorized`) and `refused` (nothing listening). */
export const SHARED_UPSTREAM_FAILURES: UpstreamFailureRow[] = [
  {
    name: 'upstream 401 (a bad upstream key is not the client’s fault)',
    model: 'up-unauthorized',
    status: [500, 502, 503],
    cls: InternalServerError,
    type: 'server_error',
    message: /upstream refused/,
  },
  {
    name: 'upstream 403',
    knobs: { fake_fail: 'status:403' },
    status: [500, 502, 503],
    cls: InternalServerError,
    type: 'server_error',
    message: /upstream refused/,
  },
  {
    name: 'upstream 429',
    knobs: { fake_fail: 'status:429' },
    status: 429,
    cls: RateLimitError,
    message: /rate limit/,
    retryAfter: true,
  },
  badGateway('upstream 500', 'status:500'),
  badGateway('upstream 503', 'status:503'),
  badGateway('garbage body', 'garbage'),
  badGateway('no choices', 'no-choices'),
  badGateway('finish_reason abort', 'finish-abort'),
  badGateway('reset before the first token', 'reset-after:0'),
  badGateway('EOF before the first token', 'eof-after:0'),
  badGateway('oversize frame', 'oversize', true),
  {
    name: 'in-band error frame',
    knobs: { fake_fail: 'error-frame' },
    status: 400,
    cls: BadRequestError,
    type: 'invalid_request_error',
    message: /boom/,
  },
  {
    name: 'connection refused on every deployment',
    model: 'refused',
    status: 503,
    cls: InternalServerError,
    type: 'server_error',
    message: /unavailable/,
  },
];

/** Failures after the first token, as one in-band error event: the fake upstream's knob and the message. */
export const AFTER_FIRST_TOKEN_FAILURES = [
  { name: 'connection reset', fail: 'reset-after:2', message: /terminated/ },
  { name: 'EOF without [DONE]', fail: 'eof-after:2', message: /terminated/ },
  { name: 'stall', fail: 'stall-after:2', message: /stalled/ },
];

/** Each row in both modes (stream-only rows once). */
export function failureCases(rows: UpstreamFailureRow[]) {
  return rows.flatMap((r) =>
    (r.streamOnly ? [true] : [false, true]).map((stream) => ({ ...r, stream, mode: stream ? 'stream' : 'non-stream' })),
  );
}
