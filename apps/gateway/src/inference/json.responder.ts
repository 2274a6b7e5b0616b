import { ApiError, type OperationSpec, type RelayMessage, type ResponseMeta } from '@app/common';
import type { Response } from 'express';
import { sendApiError } from '../http/error-response';
import { type LateHeaders, NO_LATE_HEADERS, type Responder, setLateHeaders } from './responder';

/**
 * Answers a non-stream request from the worker's `result` message. When the result was too
 * large for one relay message, the `part` messages before it carry its output array as raw
 * JSON slices (the session has already checked that none is missing or repeated): they are
 * written to the client as they are, never parsed or serialised again, so a 40 MB answer
 * costs this gateway no more than copying it.
 */
export class JsonResponder implements Responder {
  private ended = false;
  /** Raw JSON slices of the output, in order; undefined until a part arrives. */
  private parts?: string[];

  constructor(
    private readonly res: Response,
    private readonly op: OperationSpec,
    private readonly meta: ResponseMeta,
    private readonly lateHeaders: LateHeaders = NO_LATE_HEADERS,
  ) {}

  get finished(): boolean {
    return this.ended;
  }

  close(): void {
    this.ended = true;
    this.parts = undefined;
  }

  onMessage(msg: RelayMessage): void {
    if (this.ended) {
      return;
    }
    if (msg.t === 'part') {
      (this.parts ??= []).push(msg.raw);
    } else if (msg.t === 'result') {
      const output = this.parts ?? [JSON.stringify(msg.output ?? [])];
      this.parts = undefined;
      this.ended = true;
      this.write(output, this.op.resultEnvelope(this.meta, msg.usage, msg.system_fingerprint));
    } else if (msg.t === 'error') {
      this.fail(ApiError.fromBody(msg.status, msg.error, msg.retryAfterMs));
    }
  }

  fail(err: ApiError): void {
    if (this.ended) {
      return;
    }
    this.ended = true;
    this.parts = undefined; // a large partial result must not outlive its request
    setLateHeaders(this.res, this.lateHeaders);
    sendApiError(this.res, err);
  }

  private write(output: string[], [head, tail]: [string, string]): void {
    const res = this.res;
    res.statusCode = 200;
    res.setHeader('content-type', 'application/json; charset=utf-8');
    setLateHeaders(res, this.lateHeaders);
    if (output.length === 1) {
      res.end(head + output[0] + tail);
      return;
    }
    let length = Buffer.byteLength(head) + Buffer.byteLength(tail);
    for (const piece of output) {
      length += Buffer.byteLength(piece);
    }
    res.setHeader('content-length', length);
    res.write(head);
    for (const piece of output) {
      res.write(piece);
    }
    res.end(tail);
  }
}
