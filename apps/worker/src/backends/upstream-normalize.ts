import type { ChoiceDelta, FinishReason, Logprobs, ResultItem, StreamChoice, Usage } from '@app/common';
import type { BackendError } from './backend.error';
import type { BackendResult, StreamEvent } from './llm-backend';
import { fromErrorFrame, isRecord, upstreamGenerationFailed, upstreamInvalid } from './upstream-errors';

/**
 * Validates upstream completion objects and reduces them to exactly the OpenAI fields we
 * relay (the envelope helpers here serve chat too, see upstream-normalize-chat.ts). vLLM adds `stop_reason`, `token_ids`, `prompt_logprobs`…; those must not reach
 * the client, and a wrong shape must fail here rather than deep inside the gateway.
 */

/** The failure to throw for a wrong shape; the stream and non-stream paths word it differently. */
export type ShapeError = (detail: string) => BackendError;

/** Validates one upstream choice (whole or delta) and keeps only the fields we relay. */
export type ChoiceNormaliser<C> = (raw: unknown, shapeError: ShapeError) => C;

/** A whole non-stream completion response body. */
export function normaliseCompletion(body: unknown): BackendResult & { output: ChoiceDelta[] } {
  return normaliseResponse(body, normaliseChoice);
}

/** One parsed completion stream frame (see {@link normaliseFrame}). */
export function normaliseChunk(frame: unknown, shapeError: ShapeError): StreamEvent | null {
  return normaliseFrame(frame, shapeError, normaliseChoice);
}

/** A whole non-stream body with a `choices` array (completions, chat), each choice checked by `choice`. */
export function normaliseResponse<C extends ResultItem>(
  body: unknown,
  choice: ChoiceNormaliser<C>,
): BackendResult & { output: C[] } {
  if (!isRecord(body)) {
    throw upstreamInvalid('the body is not a JSON object');
  }
  if (body.error !== undefined && body.error !== null) {
    throw fromErrorFrame(body.error);
  }
  if (!Array.isArray(body.choices)) {
    throw upstreamInvalid('no choices array');
  }
  const choices = body.choices.map((c: unknown) => choice(c, upstreamInvalid));
  const result: BackendResult & { output: C[] } = { output: choices, usage: parseUsage(body.usage, upstreamInvalid) };
  if (typeof body.system_fingerprint === 'string') {
    result.system_fingerprint = body.system_fingerprint;
  }
  return result;
}

/**
 * One parsed stream frame → the event to yield, or null for a frame with nothing to relay
 * (e.g. `choices: []` without usage). Throws on an error frame or a wrong shape.
 */
export function normaliseFrame(
  frame: unknown,
  shapeError: ShapeError,
  choice: ChoiceNormaliser<StreamChoice>,
): StreamEvent | null {
  if (!isRecord(frame)) {
    throw shapeError('a frame is not a JSON object');
  }
  if (frame.error !== undefined && frame.error !== null) {
    throw fromErrorFrame(frame.error);
  }
  if (!Array.isArray(frame.choices)) {
    throw shapeError('a frame has no choices array');
  }
  if (frame.choices.length === 0) {
    // The final usage chunk; with continuous usage (vLLM) only this one holds the request total.
    const usage = parseUsage(frame.usage, shapeError);
    return usage === null ? null : { type: 'usage', usage };
  }
  const choices = frame.choices.map((c: unknown) => choice(c, shapeError));
  return typeof frame.system_fingerprint === 'string'
    ? { type: 'chunk', choices, system_fingerprint: frame.system_fingerprint }
    : { type: 'chunk', choices };
}

/** A choice's `index`: a non-negative integer. */
export function choiceIndex(raw: Record<string, unknown>, shapeError: ShapeError): number {
  const { index } = raw;
  if (typeof index !== 'number' || !Number.isInteger(index) || index < 0) {
    throw shapeError('a choice has no valid index');
  }
  return index;
}

function normaliseChoice(raw: unknown, shapeError: ShapeError): ChoiceDelta {
  if (!isRecord(raw)) {
    throw shapeError('a choice is not an object');
  }
  const index = choiceIndex(raw, shapeError);
  const { text } = raw;
  if (typeof text !== 'string') {
    throw shapeError('a choice has no text');
  }
  return {
    index,
    text,
    // Passed through as the upstream computed it; only its presence is checked.
    logprobs: isRecord(raw.logprobs) ? (raw.logprobs as unknown as Logprobs) : null,
    finish_reason: finishReason(raw.finish_reason, shapeError),
  };
}

const COMPLETION_FINISH: ReadonlySet<FinishReason> = new Set(['stop', 'length', 'content_filter']);

function finishReason(raw: unknown, shapeError: ShapeError): FinishReason | null {
  return finishReasonOf(raw, COMPLETION_FINISH, shapeError);
}

/**
 * An upstream finish_reason as one of the operation's own (`known`). vLLM's `error` and
 * `abort` mean its engine failed or dropped the request: the output so far is not a real
 * answer. Other strings from lax servers (`eos`, `end_turn`, chat reasons on completions…)
 * still mean a normal end.
 */
export function finishReasonOf<R extends string>(
  raw: unknown,
  known: ReadonlySet<R>,
  shapeError: ShapeError,
): R | 'stop' | null {
  if (raw === undefined || raw === null) {
    return null;
  }
  if (typeof raw !== 'string') {
    throw shapeError('a choice has an invalid finish_reason');
  }
  if (known.has(raw as R)) {
    return raw as R;
  }
  if (raw === 'error' || raw === 'abort') {
    throw upstreamGenerationFailed(raw);
  }
  return 'stop';
}

export function parseUsage(raw: unknown, shapeError: ShapeError): Usage | null {
  if (raw === undefined || raw === null) {
    return null;
  }
  if (!isRecord(raw)) {
    throw shapeError('usage is not an object');
  }
  const prompt = raw.prompt_tokens;
  const completion = raw.completion_tokens ?? 0;
  if (!isCount(prompt) || !isCount(completion)) {
    throw shapeError('usage has invalid token counts');
  }
  const total = isCount(raw.total_tokens) ? raw.total_tokens : prompt + completion;
  return { prompt_tokens: prompt, completion_tokens: completion, total_tokens: total };
}

function isCount(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 0;
}
