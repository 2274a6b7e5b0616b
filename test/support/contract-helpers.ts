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
