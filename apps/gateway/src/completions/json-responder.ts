import { ApiError, type CompletionResponse, type RelayMessage } from '@app/common';
import type { Response } from 'express';
import { sendApiError } from '../http/error-response';
import type { ResponseMeta } from './sse-responder';

/** Answers a non-stream completion from the worker's single `result` message. */
export class JsonResponder {
  private ended = false;

  constructor(
    private readonly res: Response,
    private readonly meta: ResponseMeta,
  ) {}

  get finished(): boolean {
    return this.ended;
  }

  /** The response closed; a non-stream answer holds no timers. */
  close(): void {
    this.ended = true;
  }

  onMessage(msg: RelayMessage): void {
    if (this.ended) {
      return;
    }
    if (msg.t === 'result') {
      const body: CompletionResponse = {
        id: this.meta.id,
        object: 'text_completion',
        created: this.meta.created,
        model: this.meta.model,
        ...(msg.system_fingerprint !== undefined && { system_fingerprint: msg.system_fingerprint }),
        choices: msg.choices,
        usage: msg.usage ?? { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0 },
      };
      this.ended = true;
      this.res.status(200).json(body);
    } else if (msg.t === 'error') {
      this.fail(ApiError.fromBody(msg.status, msg.error, msg.retryAfterMs));
    }
  }

  fail(err: ApiError): void {
    if (this.ended) {
      return;
    }
    this.ended = true;
    sendApiError(this.res, err);
  }
}
