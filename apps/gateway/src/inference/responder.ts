import type { ApiError, RelayMessage } from '@app/common';

/**
 * Turns one request's relay messages into its HTTP response: JSON (JsonResponder) or
 * Server-Sent Events (SseResponder). The controller picks one; the run feeds it.
 */
export interface Responder {
  /** True once the response is complete (or cut off): closing it then is not a disconnect. */
  readonly finished: boolean;
  onMessage(msg: RelayMessage): void;
  /** Reports an error: as a status while nothing was committed, in-band after. */
  fail(err: ApiError): void;
  /** The response closed: let go of timers and buffers. */
  close(): void;
}

/** Headers whose value is known only when the response is written (`x-aqueduct-queue-ms`). */
export type LateHeaders = () => Record<string, string>;

export const NO_LATE_HEADERS: LateHeaders = () => ({});

export function setLateHeaders(res: { setHeader(name: string, value: string): unknown }, headers: LateHeaders): void {
  for (const [name, value] of Object.entries(headers())) {
    res.setHeader(name, value);
  }
}
