import { ApiError, type ChoiceDelta, type CompletionResponse, type RelayMessage } from '@app/common';
import type { Response } from 'express';
import { sendApiError } from '../http/error-response';
import type { ResponseMeta } from './sse-responder';

/** One choice being reassembled from `part` messages: text pieces are joined once, at the end. */
interface PartialChoice {
  index: number;
  texts: string[];
  logprobs: ChoiceDelta['logprobs'];
  finish: ChoiceDelta['finish_reason'];
}

/**
 * Answers a non-stream completion from the worker's `result` message, reassembling the
 * `part` messages that precede it when the result was too large for one relay message
 * (the session has already checked that none is missing or repeated).
 */
export class JsonResponder {
  private ended = false;
  /** By index, in the order the choices first appeared; undefined until a part arrives. */
  private parts?: Map<number, PartialChoice>;

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
    if (msg.t === 'part') {
      this.parts ??= new Map();
      this.append(msg.choices);
    } else if (msg.t === 'result') {
      let choices = msg.choices;
      if (this.parts !== undefined) {
        this.append(msg.choices);
        choices = [...this.parts.values()].map((c) => ({
          index: c.index,
          text: c.texts.join(''),
          logprobs: c.logprobs,
          finish_reason: c.finish,
        }));
        this.parts = undefined;
      }
      const body: CompletionResponse = {
        id: this.meta.id,
        object: 'text_completion',
        created: this.meta.created,
        model: this.meta.model,
        ...(msg.system_fingerprint !== undefined && { system_fingerprint: msg.system_fingerprint }),
        choices,
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
    this.parts = undefined; // a large partial result must not outlive its request
    sendApiError(this.res, err);
  }

  private append(pieces: ChoiceDelta[]): void {
    const parts = this.parts as Map<number, PartialChoice>;
    for (const p of pieces) {
      let c = parts.get(p.index);
      if (c === undefined) {
        c = { index: p.index, texts: [], logprobs: null, finish: null };
        parts.set(p.index, c);
      }
      if (p.text !== '') {
        c.texts.push(p.text);
      }
      if (p.logprobs !== null) {
        c.logprobs = c.logprobs === null ? cloneLogprobs(p.logprobs) : appendLogprobs(c.logprobs, p.logprobs);
      }
      c.finish = p.finish_reason ?? c.finish;
    }
  }
}

type Logprobs = NonNullable<ChoiceDelta['logprobs']>;

function cloneLogprobs(l: Logprobs): Logprobs {
  return {
    tokens: [...l.tokens],
    token_logprobs: [...l.token_logprobs],
    top_logprobs: l.top_logprobs === null ? null : [...l.top_logprobs],
    text_offset: [...l.text_offset],
  };
}

/** Appends in place; `push` per element, as spreading a huge slice into push() can overflow the stack. */
function appendLogprobs(into: Logprobs, more: Logprobs): Logprobs {
  const push = <T>(to: T[], from: T[]) => {
    for (const x of from) {
      to.push(x);
    }
  };
  push(into.tokens, more.tokens);
  push(into.token_logprobs, more.token_logprobs);
  if (into.top_logprobs !== null && more.top_logprobs !== null) {
    push(into.top_logprobs, more.top_logprobs);
  }
  push(into.text_offset, more.text_offset);
  return into;
}
