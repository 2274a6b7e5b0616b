import type {
  ChatChoice,
  ChatChunkChoice,
  ChatDelta,
  ChatFinishReason,
  ChatLogprobs,
  ChatMessage,
  ChatToolCall,
  ChatToolCallDelta,
} from '@app/common';
import type { BackendResult, StreamEvent } from './llm-backend';
import { isRecord } from './upstream-errors';
import {
  choiceIndex,
  finishReasonOf,
  type ChoiceNormaliser,
  normaliseFrame,
  normaliseResponse,
  type ShapeError,
} from './upstream-normalize';

/**
 * Chat completions from an upstream, reduced to OpenAI's fields. Kept: content, refusal,
 * tool calls (checked field by field: the client's SDK parses them), the legacy
 * `function_call`, OpenAI's `audio` and `annotations` (a client that asked for audio
 * output or web search needs them), and the reasoning text that vLLM / DeepSeek-style
 * servers add (`reasoning_content`, `reasoning`). Dropped: everything else a vendor adds.
 */

/** Reasoning text some servers add beside `content`; relayed because clients of those servers read it. */
const REASONING_FIELDS = ['reasoning_content', 'reasoning'] as const;

/** A whole non-stream chat response body. */
export function normaliseChatCompletion(body: unknown): BackendResult & { output: ChatChoice[] } {
  return normaliseResponse(body, normaliseChatChoice);
}

/**
 * The frame normaliser for one chat stream. It is stateful, hence one per request: the
 * first delta of each choice index gets `role: "assistant"` (OpenAI's SDKs build the message
 * from it, and lax servers omit it), later ones never carry a role.
 */
export function chatStreamNormaliser(): (frame: unknown, shapeError: ShapeError) => StreamEvent | null {
  const started = new Set<number>();
  const choice: ChoiceNormaliser<ChatChunkChoice> = (raw, shapeError) => {
    const c = normaliseChatChunkChoice(raw, shapeError);
    if (!started.has(c.index)) {
      started.add(c.index);
      c.delta = { role: 'assistant', ...c.delta };
    }
    return c;
  };
  return (frame, shapeError) => normaliseFrame(frame, shapeError, choice);
}

/**
 * A whole chat answer as the chunks a stream would have carried: per choice, one delta with
 * role, content and indexed tool calls, then one with `delta: {}` and the finish_reason.
 * For servers that answer `stream: true` with a plain JSON body.
 */
export function chatChoicesAsChunks(choices: ChatChoice[]): [ChatChunkChoice[], ChatChunkChoice[]] {
  const deltas = choices.map((c): ChatChunkChoice => {
    const { role, tool_calls, ...rest } = c.message;
    const delta: ChatDelta = { role, ...rest };
    if (tool_calls !== undefined) {
      delta.tool_calls = tool_calls.map((t, index) => ({ index, ...t }));
    }
    return { index: c.index, delta, logprobs: c.logprobs, finish_reason: null };
  });
  const ends = choices.map((c): ChatChunkChoice => ({
    index: c.index,
    delta: {},
    logprobs: null,
    finish_reason: c.finish_reason,
  }));
  return [deltas, ends];
}

function normaliseChatChoice(raw: unknown, shapeError: ShapeError): ChatChoice {
  if (!isRecord(raw)) {
    throw shapeError('a choice is not an object');
  }
  const index = choiceIndex(raw, shapeError);
  const m = raw.message;
  if (!isRecord(m)) {
    throw shapeError('a choice has no message object');
  }
  const message: ChatMessage = { role: 'assistant', content: optionalText(m.content, 'content', shapeError) ?? null };
  const refusal = optionalText(m.refusal, 'refusal', shapeError);
  if (refusal !== undefined) {
    message.refusal = refusal;
  }
  // vLLM sends `tool_calls: []` on every message; OpenAI omits the field when there are none.
  if (m.tool_calls !== undefined && m.tool_calls !== null) {
    if (!Array.isArray(m.tool_calls)) {
      throw shapeError('tool_calls is not an array');
    }
    if (m.tool_calls.length > 0) {
      message.tool_calls = m.tool_calls.map((t: unknown) => toolCall(t, shapeError));
    }
  }
  copyExtras(m, message, shapeError);
  return {
    index,
    message,
    logprobs: chatLogprobs(raw.logprobs),
    // A whole answer has ended; a lax server that leaves the reason out means a normal end.
    finish_reason: chatFinishReason(raw.finish_reason, shapeError) ?? 'stop',
  };
}

function normaliseChatChunkChoice(raw: unknown, shapeError: ShapeError): ChatChunkChoice {
  if (!isRecord(raw)) {
    throw shapeError('a choice is not an object');
  }
  const index = choiceIndex(raw, shapeError);
  // Some servers leave `delta` out of the chunk that only carries the finish_reason.
  const d = raw.delta ?? {};
  if (!isRecord(d)) {
    throw shapeError('a choice has no delta object');
  }
  const delta: ChatDelta = {};
  const content = optionalText(d.content, 'content', shapeError);
  if (content !== undefined) {
    delta.content = content;
  }
  const refusal = optionalText(d.refusal, 'refusal', shapeError);
  if (refusal !== undefined) {
    delta.refusal = refusal;
  }
  if (d.tool_calls !== undefined && d.tool_calls !== null) {
    if (!Array.isArray(d.tool_calls)) {
      throw shapeError('tool_calls is not an array');
    }
    if (d.tool_calls.length > 0) {
      delta.tool_calls = d.tool_calls.map((t: unknown, position: number) => toolCallDelta(t, position, shapeError));
    }
  }
  copyExtras(d, delta, shapeError);
  return {
    index,
    delta,
    logprobs: chatLogprobs(raw.logprobs),
    finish_reason: chatFinishReason(raw.finish_reason, shapeError),
  };
}

function toolCall(raw: unknown, shapeError: ShapeError): ChatToolCall {
  if (!isRecord(raw) || typeof raw.id !== 'string' || !isFunctionType(raw.type) || !isRecord(raw.function)) {
    throw shapeError('a tool call is not {id, type: "function", function}');
  }
  const { name, arguments: args } = raw.function;
  if (typeof name !== 'string' || typeof args !== 'string') {
    throw shapeError('a tool call function has no name or arguments string');
  }
  return { id: raw.id, type: 'function', function: { name, arguments: args } };
}

/** A streamed tool call; `position` stands in for a missing `index` (servers that send whole calls at once). */
function toolCallDelta(raw: unknown, position: number, shapeError: ShapeError): ChatToolCallDelta {
  if (!isRecord(raw)) {
    throw shapeError('a tool call delta is not an object');
  }
  const index = raw.index ?? position;
  if (typeof index !== 'number' || !Number.isInteger(index) || index < 0) {
    throw shapeError('a tool call delta has no valid index');
  }
  const out: ChatToolCallDelta = { index };
  if (raw.id !== undefined && raw.id !== null) {
    if (typeof raw.id !== 'string') {
      throw shapeError('a tool call delta has a non-string id');
    }
    out.id = raw.id;
  }
  if (raw.type !== undefined && raw.type !== null) {
    if (raw.type !== 'function') {
      throw shapeError('a tool call delta is not of type "function"');
    }
    out.type = 'function';
  }
  if (raw.function !== undefined && raw.function !== null) {
    out.function = functionFields(raw.function, shapeError);
  }
  return out;
}

/** `{name?, arguments?}` of a streamed tool call or a legacy `function_call`. */
function functionFields(raw: unknown, shapeError: ShapeError): { name?: string; arguments?: string } {
  if (!isRecord(raw)) {
    throw shapeError('a function call is not an object');
  }
  const out: { name?: string; arguments?: string } = {};
  for (const key of ['name', 'arguments'] as const) {
    const v = raw[key];
    if (v === undefined || v === null) {
      continue;
    }
    if (typeof v !== 'string') {
      throw shapeError(`a function call ${key} is not a string`);
    }
    out[key] = v;
  }
  return out;
}

/**
 * Reasoning text, audio, annotations and the legacy `function_call`: kept when well-formed,
 * the rest of a vendor's fields dropped. Audio and annotations are relayed as OpenAI sends
 * them; only their outer type is checked.
 */
function copyExtras(from: Record<string, unknown>, to: ChatMessage | ChatDelta, shapeError: ShapeError): void {
  for (const key of REASONING_FIELDS) {
    if (typeof from[key] === 'string') {
      to[key] = from[key];
    }
  }
  if (isRecord(from.audio)) {
    to.audio = from.audio;
  }
  if (Array.isArray(from.annotations)) {
    to.annotations = from.annotations;
  }
  if (from.function_call !== undefined && from.function_call !== null) {
    to.function_call = functionFields(from.function_call, shapeError);
  }
}

/** undefined when absent, so that a delta without content stays without it. */
function optionalText(v: unknown, field: string, shapeError: ShapeError): string | null | undefined {
  if (v === undefined || v === null || typeof v === 'string') {
    return v;
  }
  throw shapeError(`a message ${field} is not a string or null`);
}

function isFunctionType(v: unknown): boolean {
  // A missing type on a whole call can only mean a function: it is the only kind OpenAI defines here.
  return v === undefined || v === 'function';
}

/** Passed through as the upstream computed it; only its presence is checked, as for completions. */
function chatLogprobs(raw: unknown): ChatLogprobs | null {
  return isRecord(raw) ? (raw as unknown as ChatLogprobs) : null;
}

const CHAT_FINISH: ReadonlySet<ChatFinishReason> = new Set([
  'stop',
  'length',
  'tool_calls',
  'content_filter',
  'function_call',
]);

function chatFinishReason(raw: unknown, shapeError: ShapeError): ChatFinishReason | null {
  return finishReasonOf(raw, CHAT_FINISH, shapeError);
}
