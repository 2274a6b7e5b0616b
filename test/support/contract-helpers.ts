import { randomUUID } from 'node:crypto';
import OpenAI, { APIError } from 'openai';
import { expect } from 'vitest';
import { type Deployment, simulatorDeployment, upstreamDeployment } from './router-config';
import type { Stack } from './stack';

/**
 * Helpers for the OpenAI contract tests: raw HTTP exchanges with a real gateway, OpenAI
 * error-object checks, SSE parsing and per-index demultiplexing of streamed choices.
 */

export interface RawResponse {
  status: number;
  headers: Headers;
  text: string;
  /** The parsed body, or undefined when it is not JSON (SSE, empty). */
  json: unknown;
}

export interface RawOptions {
  method?: string;
  path?: string;
  /** Bearer key; `null` sends no Authorization header. */
  key?: string | null;
  headers?: Record<string, string>;
  /** Sent verbatim instead of JSON.stringify(body). */
  rawBody?: string;
}

/** One HTTP exchange, body read to the end. */
export async function raw(stack: Stack, body: unknown, opts: RawOptions = {}): Promise<RawResponse> {
  const method = opts.method ?? 'POST';
  const headers: Record<string, string> = { ...opts.headers };
  if (opts.key != null) {
    headers.authorization = `Bearer ${opts.key}`;
  }
  let payload: string | Uint8Array | undefined;
  if (opts.rawBody !== undefined) {
    // Bytes, so that fetch adds no Content-Type of its own (a string would get text/plain).
    payload = Buffer.from(opts.rawBody);
  } else if (body !== undefined) {
    payload = JSON.stringify(body);
    headers['content-type'] ??= 'application/json';
  }
  const res = await fetch(`${stack.baseUrl}${opts.path ?? '/v1/completions'}`, { method, headers, body: payload });
  const text = await res.text();
  let json: unknown;
  try {
    json = JSON.parse(text) as unknown;
  } catch {
    json = undefined;
  }
  return { status: res.status, headers: res.headers, text, json };
}

export interface ErrorExpectation {
  type?: string;
  param?: string | null;
  code?: string | null;
  /** Every pattern must match the message. */
  message?: RegExp | RegExp[];
}

export interface OpenAIErrorObject {
  message: string;
  type: string;
  param: string | null;
  code: string | null;
}

/** Asserts an OpenAI error response: status, exactly the four keys, x-request-id, and the given fields. */
export function expectOpenAIError(res: RawResponse, status: number, want: ErrorExpectation = {}): OpenAIErrorObject {
  expect(res.status, res.text).toBe(status);
  expect(res.headers.get('content-type')).toMatch(/^application\/json/);
  expect(res.headers.get('x-request-id')).toMatch(/\S/);
  const body = res.json as { error?: Record<string, unknown> } | undefined;
  expect(Object.keys(body ?? {}), res.text).toEqual(['error']);
  const error = body?.error ?? {};
  expect(Object.keys(error).sort()).toEqual(['code', 'message', 'param', 'type']);
  expect(typeof error.message).toBe('string');
  expect((error.message as string).length).toBeGreaterThan(0);
  expect(typeof error.type).toBe('string');
  expect(error.param === null || typeof error.param === 'string').toBe(true);
  expect(error.code === null || typeof error.code === 'string').toBe(true);
  if (want.type !== undefined) {
    expect(error.type).toBe(want.type);
  }
  if (want.param !== undefined) {
    expect(error.param).toBe(want.param);
  }
  if (want.code !== undefined) {
    expect(error.code).toBe(want.code);
  }
  for (const pattern of [want.message ?? []].flat()) {
    expect(error.message).toMatch(pattern);
  }
  return error as unknown as OpenAIErrorObject;
}

/** The rejection of a promise (fails the test if it resolves). */
export async function rejection(promise: Promise<unknown>): Promise<APIError> {
  const outcome = await promise.then(
    (value) => ({ ok: true as const, value }),
    (err: unknown) => ({ ok: false as const, err }),
  );
  if (outcome.ok) {
    throw new Error(`expected a rejection, got ${JSON.stringify(outcome.value)}`);
  }
  expect(outcome.err).toBeInstanceOf(APIError);
  return outcome.err as APIError;
}

export interface SseBody {
  /** Every `data:` payload in order, `[DONE]` included. */
  data: string[];
  /** The JSON payloads (everything but `[DONE]`). */
  events: Record<string, unknown>[];
  /** Completion chunks: events with a non-empty choices array. */
  chunks: CompletionChunk[];
  /** Events with `choices: []` (usage chunks). */
  usageChunks: CompletionChunk[];
  /** Events with an `error` key. */
  errors: { error: OpenAIErrorObject }[];
}

export interface StreamChoice {
  index: number;
  text: string;
  logprobs: unknown;
  finish_reason: string | null;
}

export interface CompletionChunk {
  id: string;
  object: string;
  created: number;
  model: string;
  choices: StreamChoice[];
  usage?: { prompt_tokens: number; completion_tokens: number; total_tokens: number } | null;
}

/** Splits an SSE body into its events; comments (`:`) are skipped as every client does. */
export function parseSse(text: string): SseBody {
  const data: string[] = [];
  for (const frame of text.split('\n\n')) {
    const lines = frame.split('\n').filter((l) => l !== '' && !l.startsWith(':'));
    if (lines.length === 0) {
      continue;
    }
    for (const line of lines) {
      expect(line, `unexpected SSE line in ${JSON.stringify(text.slice(0, 500))}`).toMatch(/^data: /);
    }
    data.push(lines.map((l) => l.slice('data: '.length)).join('\n'));
  }
  const events = data.filter((d) => d !== '[DONE]').map((d) => JSON.parse(d) as Record<string, unknown>);
  const isChunk = (e: Record<string, unknown>) => Array.isArray(e.choices);
  return {
    data,
    events,
    chunks: events.filter((e) => isChunk(e) && (e.choices as unknown[]).length > 0) as unknown as CompletionChunk[],
    usageChunks: events.filter(
      (e) => isChunk(e) && (e.choices as unknown[]).length === 0,
    ) as unknown as CompletionChunk[],
    errors: events.filter((e) => 'error' in e) as unknown as { error: OpenAIErrorObject }[],
  };
}

export interface MergedChoice {
  text: string;
  finish_reason: string | null;
  /** How many chunks carried a finish_reason (must be exactly one). */
  finishes: number;
  tokens: string[];
}

/** Joins streamed choice deltas per index, as a client demultiplexes interleaved choices. */
export function demux(chunks: { choices: StreamChoice[] }[]): Map<number, MergedChoice> {
  const out = new Map<number, MergedChoice>();
  for (const chunk of chunks) {
    for (const c of chunk.choices) {
      const m = out.get(c.index) ?? { text: '', finish_reason: null, finishes: 0, tokens: [] };
      m.text += c.text;
      if (c.finish_reason !== null) {
        m.finish_reason = c.finish_reason;
        m.finishes += 1;
      }
      const lp = c.logprobs as { tokens?: string[] } | null;
      m.tokens.push(...(lp?.tokens ?? []));
      out.set(c.index, m);
    }
  }
  return out;
}

/** The text of every streamed chunk joined in arrival order: a single-choice stream's whole answer. */
export function streamedText(sse: Pick<SseBody, 'chunks'>): string {
  return sse.chunks.map((c) => c.choices.map((x) => x.text).join('')).join('');
}

/** Texts by index 0..n-1 (asserting the indexes are exactly that range). */
export function textsByIndex(merged: Map<number, MergedChoice>): string[] {
  const indexes = [...merged.keys()].sort((a, b) => a - b);
  expect(indexes).toEqual(indexes.map((_, i) => i));
  return indexes.map((i) => merged.get(i)?.text ?? '');
}

/** The models the request-contract suites route: simulators `echo` and `lorem`, and `up` on the fake upstream. */
export function contractModels(upstreamUrl: string): Deployment[] {
  return [
    simulatorDeployment('echo', 'echo'),
    simulatorDeployment('lorem', 'lorem'),
    upstreamDeployment('up', upstreamUrl),
  ];
}

/** An SDK client without retries, so a status is observed exactly once. */
export function sdk(stack: Stack, key: string): OpenAI {
  return new OpenAI({ apiKey: key, baseURL: `${stack.baseUrl}/v1`, maxRetries: 0, timeout: 20_000 });
}

/** A marker field to find one request among the fake upstream's recorded ones. */
export function probe(): { probe: string } {
  return { probe: randomUUID() };
}

/** Words of the fake upstream's deterministic answer to one prompt string. */
export function fakeUpstreamText(prompt: string): string {
  return ` echo:${prompt
    .split(/\s+/)
    .filter(Boolean)
    .map((w) => ` ${w}`)
    .join('')}`;
}

// ---- chat completions and embeddings ----------------------------------------------------

/** One `tool_calls` entry of a streamed chat delta. */
export interface ChatToolCallDelta {
  index: number;
  id?: string;
  type?: string;
  function?: { name?: string; arguments?: string };
}

export interface ChatDelta {
  role?: string;
  content?: string | null;
  refusal?: string | null;
  tool_calls?: ChatToolCallDelta[];
  [extra: string]: unknown;
}

export interface ChatTokenLogprob {
  token: string;
  logprob: number;
  bytes: number[] | null;
  top_logprobs: { token: string; logprob: number; bytes: number[] | null }[];
}

export interface ChatLogprobs {
  content: ChatTokenLogprob[] | null;
  refusal?: ChatTokenLogprob[] | null;
}

export interface ChatChunkChoice {
  index: number;
  delta: ChatDelta;
  logprobs: ChatLogprobs | null;
  finish_reason: string | null;
}

export interface ChatChunk {
  id: string;
  object: string;
  created: number;
  model: string;
  system_fingerprint?: string;
  choices: ChatChunkChoice[];
  usage?: { prompt_tokens: number; completion_tokens: number; total_tokens: number } | null;
}

export interface ChatToolCall {
  id: string;
  type: string;
  function: { name: string; arguments: string };
}

export interface ChatChoice {
  index: number;
  message: { role: string; content: string | null; tool_calls?: ChatToolCall[]; [extra: string]: unknown };
  logprobs: ChatLogprobs | null;
  finish_reason: string;
}

export interface ChatCompletion {
  id: string;
  object: string;
  created: number;
  model: string;
  system_fingerprint?: string;
  choices: ChatChoice[];
  usage: { prompt_tokens: number; completion_tokens: number; total_tokens: number };
}

/** The chat chunks of a parsed stream (events with a non-empty choices array). */
export function chatChunks(sse: Pick<SseBody, 'chunks'>): ChatChunk[] {
  return sse.chunks as unknown as ChatChunk[];
}

/** One streamed chat choice, joined from its deltas. */
export interface MergedChatChoice {
  /** Roles in the order their deltas carried one (must be exactly `['assistant']`). */
  roles: string[];
  /** Whether the very first delta of this index carried the role. */
  roleFirst: boolean;
  content: string;
  /** Whether any delta carried a non-empty content. */
  hasContent: boolean;
  finish_reason: string | null;
  /** How many chunks carried a finish_reason (must be exactly one). */
  finishes: number;
  /** Whether a delta arrived after the one with the finish_reason. */
  deltaAfterFinish: boolean;
  /** Tool calls joined per tool-call index. */
  toolCalls: Map<number, { id?: string; type?: string; name?: string; arguments: string; deltas: number }>;
  /** Tool-call deltas whose first appearance of an index lacked id, type or name. */
  toolCallHeadsMissing: number;
  /** Tool-call deltas that repeated id/name after the first of their index. */
  toolCallHeadsRepeated: number;
  logprobTokens: string[];
  chunks: number;
}

/** Joins streamed chat deltas per choice index, as the SDKs accumulate them. */
export function demuxChat(chunks: { choices: ChatChunkChoice[] }[]): Map<number, MergedChatChoice> {
  const out = new Map<number, MergedChatChoice>();
  for (const chunk of chunks) {
    for (const c of chunk.choices) {
      let m = out.get(c.index);
      if (m === undefined) {
        m = {
          roles: [],
          roleFirst: c.delta.role !== undefined,
          content: '',
          hasContent: false,
          finish_reason: null,
          finishes: 0,
          deltaAfterFinish: false,
          toolCalls: new Map(),
          toolCallHeadsMissing: 0,
          toolCallHeadsRepeated: 0,
          logprobTokens: [],
          chunks: 0,
        };
        out.set(c.index, m);
      }
      m.chunks += 1;
      if (m.finishes > 0) {
        m.deltaAfterFinish = true;
      }
      if (c.delta.role !== undefined) {
        m.roles.push(c.delta.role);
      }
      if (typeof c.delta.content === 'string') {
        m.content += c.delta.content;
        m.hasContent ||= c.delta.content !== '';
      }
      for (const t of c.delta.tool_calls ?? []) {
        const call = m.toolCalls.get(t.index);
        if (call === undefined) {
          if (t.id === undefined || t.type === undefined || t.function?.name === undefined) {
            m.toolCallHeadsMissing += 1;
          }
          m.toolCalls.set(t.index, {
            id: t.id,
            type: t.type,
            name: t.function?.name,
            arguments: t.function?.arguments ?? '',
            deltas: 1,
          });
        } else {
          if (t.id !== undefined || t.function?.name !== undefined) {
            m.toolCallHeadsRepeated += 1;
          }
          call.arguments += t.function?.arguments ?? '';
          call.deltas += 1;
        }
      }
      m.logprobTokens.push(...(c.logprobs?.content ?? []).map((e) => e.token));
      if (c.finish_reason !== null) {
        m.finish_reason = c.finish_reason;
        m.finishes += 1;
      }
    }
  }
  return out;
}

/** Chat contents by index 0..n-1 (asserting the indexes are exactly that range). */
export function contentsByIndex(merged: Map<number, MergedChatChoice>): string[] {
  const indexes = [...merged.keys()].sort((a, b) => a - b);
  expect(indexes).toEqual(indexes.map((_, i) => i));
  return indexes.map((i) => merged.get(i)?.content ?? '');
}

/** `model_info` added to a deployment (e.g. `mode`), without touching the others. */
export function withInfo(d: Deployment, info: NonNullable<Deployment['model_info']>): Deployment {
  return { ...d, model_info: { ...d.model_info, ...info } };
}

/**
 * The models the chat and embeddings contract suites route: `echo`, `lorem` and `up` as in
 * {@link contractModels} (no mode: completions and chat), plus the embedding models `embed`
 * (simulator) and `up-embed` (fake upstream).
 */
export function chatModels(upstreamUrl: string): Deployment[] {
  return [
    ...contractModels(upstreamUrl),
    simulatorDeployment('embed', 'echo', {}, { mode: 'embedding' }),
    withInfo(upstreamDeployment('up-embed', upstreamUrl), { mode: 'embedding' }),
  ];
}

/** A wrong-type message must describe the type problem, not claim that the field is missing. */
export const NOT_MISSING = /^(?!.*Missing required)/;

/**
 * A maker of invalid-request cases over a valid `base` body: `patch` is applied over it
 * (undefined removes a field), and the 400 must name `param` and match every message pattern.
 */
export function invalidCases(base: Record<string, unknown>) {
  return (name: string, patch: Record<string, unknown>, param: string, ...message: RegExp[]) => ({
    name,
    body: { ...base, ...patch },
    param,
    message,
  });
}

/** A user message list with one user message. */
export function userSays(content: string): { role: 'user'; content: string }[] {
  return [{ role: 'user', content }];
}

/** The chat simulator's echo of a text: its words, one space apart (no leading space, unlike completions). */
export function simulatorEcho(text: string): string {
  return text.split(/\s+/).filter(Boolean).join(' ');
}

/** Decodes an OpenAI base64 embedding (little-endian float32). */
export function decodeBase64Embedding(b64: string): number[] {
  const bytes = Buffer.from(b64, 'base64');
  expect(bytes.length % 4).toBe(0);
  const out: number[] = [];
  for (let i = 0; i < bytes.length; i += 4) {
    out.push(bytes.readFloatLE(i));
  }
  return out;
}

/** Euclidean norm. */
export function norm(v: number[]): number {
  return Math.sqrt(v.reduce((s, x) => s + x * x, 0));
}
