import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  FAKE_ARGUMENT_PIECE,
  FAKE_EMBEDDING_DIMENSIONS,
  type FakeUpstream,
  fakeEmbedding,
  fakeToolCalls,
  lastUserText,
} from '../support/fake-upstream';
import { readSse } from '../support/http';
import { queueLength, usageRecords } from '../support/redis-state';
import { upstreamDeployment } from '../support/router-config';
import type { Stack } from '../support/stack';
import { startUpstreamStack } from '../support/upstream-stack';

/**
 * Issue item 10: a soak. SOAK_STREAMS requests (400 by default, as `npm test` runs it;
 * `npm run test:soak` runs 10 000) of mixed operations, lengths, paces and shapes, through
 * two gateways and two workers, some clients disconnecting midway: completion streams,
 * chat completion streams (some answered with streamed tool calls), non-stream chat
 * completions and embeddings, all on the fake upstream. Every chunk, message and vector is
 * checked against what the upstream generated for the request it actually received (and
 * that request against what the client sent): nothing lost, duplicated or delivered to the
 * wrong client, one upstream request and one usage record per request, and the whole run
 * bounded in time.
 */

const STREAMS = Number(process.env.SOAK_STREAMS ?? 400);
const CONCURRENCY = Number(process.env.SOAK_CONCURRENCY ?? 200);
/** Generous per-request and total bounds: a stuck stream or a collapsing pipeline fails the run. */
const STREAM_TIMEOUT_MS = 30_000;
const TOTAL_BUDGET_MS = 60_000 + STREAMS * 20;

/** Deterministic per-request choices, so that a failing request can be reproduced. */
function rand(i: number, salt: number): number {
  let x = Math.imul(i + 1, 0x9e3779b1) ^ Math.imul(salt + 7, 0x85ebca6b);
  x = Math.imul(x ^ (x >>> 16), 0x7feb352d);
  x = Math.imul(x ^ (x >>> 15), 0x846ca68b);
  return ((x ^ (x >>> 16)) >>> 0) / 4294967296;
}

/**
 * `completion`: a /v1/completions stream; `chat-stream` and `chat`: /v1/chat/completions,
 * streamed or not; `embedding`: /v1/embeddings.
 */
type Op = 'completion' | 'chat-stream' | 'chat' | 'embedding';

const PATHS: Record<Op, string> = {
  completion: '/v1/completions',
  'chat-stream': '/v1/chat/completions',
  chat: '/v1/chat/completions',
  embedding: '/v1/embeddings',
};

interface Plan {
  i: number;
  op: Op;
  words: number;
  n: number;
  itl: number;
  usage: boolean;
  /** Abort after this many chunks (undefined: read to the end). Streams only. */
  disconnectAfter?: number;
  gateway: number;
  /** Chat: a forced tool call instead of text. */
  tool: boolean;
  /** Chat: earlier turns before the last user message, whose words must not be echoed. */
  history: boolean;
  /** Chat: the last user message's content as an array of text parts. */
  parts: boolean;
  /** Chat: a max_tokens below the answer's length (finish_reason `length`). */
  cut: boolean;
  /** Chat: the limit sent as `max_completion_tokens` instead of `max_tokens`. */
  maxCompletionTokens: boolean;
  /** Embeddings: how many inputs, `dimensions` (undefined: the model's), base64 or float. */
  inputs: number;
  dimensions?: number;
  base64: boolean;
}

function planFor(i: number): Plan {
  // The completion share is planned exactly as when the soak ran completions only.
  const r = rand(i, 1);
  const words =
    r < 0.7
      ? 1 + Math.floor(rand(i, 2) * 30)
      : r < 0.95
        ? 30 + Math.floor(rand(i, 2) * 120)
        : 150 + Math.floor(rand(i, 2) * 250);
  const o = rand(i, 8);
  const op: Op = o < 0.55 ? 'completion' : o < 0.8 ? 'chat-stream' : o < 0.9 ? 'chat' : 'embedding';
  const streamed = op === 'completion' || op === 'chat-stream';
  const disconnect = streamed && rand(i, 3) < 0.05;
  return {
    i,
    op,
    // Disconnecting clients get streams long and slow enough that they really leave midway.
    words: disconnect ? Math.max(words, 40) : words,
    n: op !== 'embedding' && rand(i, 4) < 0.1 ? 2 : 1,
    itl: disconnect ? 20 : [0, 0, 0, 1, 2, 5][Math.floor(rand(i, 5) * 6)]!,
    usage: rand(i, 6) < 0.2,
    disconnectAfter: disconnect ? 2 + Math.floor(rand(i, 7) * 4) : undefined,
    gateway: i % 2,
    tool: (op === 'chat' || op === 'chat-stream') && rand(i, 9) < 0.2,
    history: rand(i, 10) < 0.5,
    parts: rand(i, 11) < 0.25,
    cut: !disconnect && rand(i, 12) < 0.1,
    maxCompletionTokens: rand(i, 13) < 0.3,
    inputs: 1 + Math.floor(rand(i, 14) * 4),
    dimensions: rand(i, 15) < 0.3 ? 8 : undefined,
    base64: rand(i, 16) < 0.3,
  };
}

/** The client's prompt (completion), last user message (chat) or first input (embeddings). */
function promptOf(plan: Plan): string {
  return Array.from({ length: plan.words }, (_, w) => `s${plan.i}w${w}`).join(' ');
}

function embeddingInputsOf(plan: Plan): string[] {
  // Short inputs: the words are what the fake upstream counts as tokens.
  return Array.from({ length: plan.inputs }, (_, k) =>
    Array.from({ length: 1 + ((plan.i + k) % 5) }, (_, w) => `s${plan.i}e${k}w${w}`).join(' '),
  );
}

/** What a chat plan limits its answer to: the whole echo (words + 1 tokens) or about half of it. */
function chatLimit(plan: Plan): number {
  return plan.cut ? Math.max(1, Math.floor(plan.words / 2)) : plan.words + 1;
}

function requestBody(plan: Plan): Record<string, unknown> {
  const common = { probe: `soak-${plan.i}`, user_id: `soak-${plan.i}` };
  const prompt = promptOf(plan);
  switch (plan.op) {
    case 'completion':
      return {
        model: 'up',
        prompt,
        max_tokens: plan.words + 1,
        n: plan.n,
        stream: true,
        ...(plan.usage && { stream_options: { include_usage: true } }),
        fake_itl_ms: plan.itl,
        ...common,
      };
    case 'chat':
    case 'chat-stream': {
      const last = plan.parts
        ? [
            { type: 'text', text: prompt.split(' ').slice(0, 1).join(' ') },
            { type: 'text', text: prompt.split(' ').slice(1).join(' ') },
          ].filter((p) => p.text !== '')
        : prompt;
      const messages = [
        ...(plan.history
          ? [
              { role: 'system', content: 'you are the soak' },
              { role: 'user', content: `earlier question ${plan.i}` },
              { role: 'assistant', content: `earlier answer ${plan.i}` },
            ]
          : []),
        { role: 'user', content: last },
      ];
      const stream = plan.op === 'chat-stream';
      return {
        model: 'up',
        messages,
        [plan.maxCompletionTokens ? 'max_completion_tokens' : 'max_tokens']: chatLimit(plan),
        n: plan.n,
        ...(plan.tool && {
          tools: [
            { type: 'function', function: { name: 'get_weather', parameters: { type: 'object', properties: {} } } },
            { type: 'function', function: { name: `soak_tool_${plan.i}`, parameters: { type: 'object' } } },
          ],
          tool_choice: { type: 'function', function: { name: `soak_tool_${plan.i}` } },
        }),
        stream,
        ...(stream && plan.usage && { stream_options: { include_usage: true } }),
        fake_itl_ms: plan.itl,
        ...common,
      };
    }
    case 'embedding':
      return {
        model: 'up-embed',
        input: plan.inputs === 1 && plan.i % 2 === 0 ? embeddingInputsOf(plan)[0] : embeddingInputsOf(plan),
        ...(plan.dimensions !== undefined && { dimensions: plan.dimensions }),
        ...(plan.base64 && { encoding_format: 'base64' }),
        ...common,
      };
  }
}

/** What the fake upstream streams for a prompt: " echo:" then " <word>" per word, per choice. */
function upstreamTokens(prompt: string, maxTokens: number): string[] {
  const words = prompt.split(/\s+/).filter(Boolean);
  return [' echo:', ...words.map((w) => ` ${w}`)].slice(0, maxTokens);
}

/** What the fake upstream answers choice `index` of a chat request with. */
interface ChatExpectation {
  content: string | null;
  calls: { id: string; name: string; arguments: string }[];
  finish: 'stop' | 'length' | 'tool_calls';
  tokens: number;
}

function expectedChat(body: Record<string, unknown>, index: number): ChatExpectation {
  const calls = fakeToolCalls(body, index);
  if (calls.length > 0) {
    const tokens = calls.reduce((t, c) => t + Math.ceil(c.arguments.length / FAKE_ARGUMENT_PIECE), 0);
    return { content: null, calls, finish: 'tool_calls', tokens };
  }
  const limit =
    typeof body.max_completion_tokens === 'number'
      ? body.max_completion_tokens
      : typeof body.max_tokens === 'number'
        ? body.max_tokens
        : Number.POSITIVE_INFINITY;
  const all = upstreamTokens(lastUserText(body.messages), Number.POSITIVE_INFINITY);
  const cut = all.slice(0, limit);
  return { content: cut.join(''), calls: [], finish: cut.length < all.length ? 'length' : 'stop', tokens: cut.length };
}

interface StreamedCall {
  id?: string;
  name?: string;
  args: string;
  /** Deltas of this call that carried an id or a name again (a duplicated header). */
  repeatedHeader: number;
}

interface Received {
  status: number;
  ids: Set<string>;
  objects: Set<string>;
  /** Text per choice index, in arrival order. */
  texts: Map<number, string>;
  finishes: Map<number, string[]>;
  /** Chat streams: the `role` of each choice's first delta. */
  firstRoles: Map<number, unknown>;
  /** Chat streams: per choice, the tool calls reassembled by their `index`. */
  calls: Map<number, Map<number, StreamedCall>>;
  chunks: number;
  usage: { completion_tokens: number }[];
  errors: unknown[];
  done: boolean;
  disconnected: boolean;
  /** Non-stream chat and embeddings: the response body. */
  json?: Record<string, unknown>;
  ms: number;
}

function post(base: string, path: string, key: string, body: unknown, signal: AbortSignal): Promise<Response> {
  return fetch(`${base}${path}`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal,
  });
}

interface ChunkEvent {
  id?: string;
  object?: string;
  error?: unknown;
  choices?: {
    index: number;
    text?: string;
    delta?: {
      role?: unknown;
      content?: string | null;
      tool_calls?: { index: number; id?: string; function?: { name?: string; arguments?: string } }[];
    };
    finish_reason: string | null;
  }[];
  usage?: { completion_tokens: number } | null;
}

/** Folds one stream event into what the client received. */
function receiveChunk(got: Received, event: ChunkEvent): void {
  got.ids.add(event.id ?? '');
  got.objects.add(event.object ?? '');
  if (event.choices?.length === 0 && event.usage) {
    got.usage.push(event.usage);
    return;
  }
  got.chunks += 1;
  for (const c of event.choices ?? []) {
    const delta = c.delta;
    if (delta === undefined) {
      got.texts.set(c.index, (got.texts.get(c.index) ?? '') + (c.text ?? ''));
    } else {
      if (!got.firstRoles.has(c.index)) {
        got.firstRoles.set(c.index, delta.role);
      }
      if (typeof delta.content === 'string') {
        got.texts.set(c.index, (got.texts.get(c.index) ?? '') + delta.content);
      }
      for (const t of delta.tool_calls ?? []) {
        const calls = got.calls.get(c.index) ?? new Map<number, StreamedCall>();
        got.calls.set(c.index, calls);
        const call = calls.get(t.index) ?? { args: '', repeatedHeader: 0 };
        calls.set(t.index, call);
        if ((t.id !== undefined && call.id !== undefined) || (t.function?.name && call.name !== undefined)) {
          call.repeatedHeader += 1;
        }
        call.id ??= t.id;
        call.name ??= t.function?.name || undefined;
        call.args += t.function?.arguments ?? '';
      }
    }
    if (c.finish_reason !== null && c.finish_reason !== undefined) {
      got.finishes.set(c.index, [...(got.finishes.get(c.index) ?? []), c.finish_reason]);
    }
  }
}

async function runRequest(base: string, key: string, plan: Plan): Promise<Received> {
  const started = Date.now();
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(new Error('stream timeout')), STREAM_TIMEOUT_MS);
  const got: Received = {
    status: 0,
    ids: new Set(),
    objects: new Set(),
    texts: new Map(),
    finishes: new Map(),
    firstRoles: new Map(),
    calls: new Map(),
    chunks: 0,
    usage: [],
    errors: [],
    done: false,
    disconnected: false,
    ms: 0,
  };
  try {
    const res = await post(base, PATHS[plan.op], key, requestBody(plan), controller.signal);
    got.status = res.status;
    if (plan.op === 'chat' || plan.op === 'embedding') {
      const text = await res.text();
      got.json = JSON.parse(text) as Record<string, unknown>;
      if (res.status !== 200) {
        got.errors.push(got.json.error ?? text);
      }
    } else {
      // One batch per network read: the disconnect check below runs between reads, not between events.
      for await (const batch of readSse(res)) {
        for (const data of batch) {
          if (data === '[DONE]') {
            got.done = true;
            continue;
          }
          const event = JSON.parse(data) as ChunkEvent;
          if (event.error !== undefined) {
            got.errors.push(event.error);
            continue;
          }
          receiveChunk(got, event);
        }
        if (plan.disconnectAfter !== undefined && got.chunks >= plan.disconnectAfter) {
          got.disconnected = true;
          controller.abort();
          break;
        }
      }
    }
  } catch (err) {
    if (!got.disconnected) {
      got.errors.push(String(err));
    }
  } finally {
    clearTimeout(timer);
  }
  got.ms = Date.now() - started;
  return got;
}

const words = (s: string) => s.split(/\s+/).filter(Boolean);

/** The vector of one `data[]` item, decoding base64 (little-endian float32) when it is a string. */
function vectorOf(embedding: unknown): number[] | undefined {
  if (Array.isArray(embedding)) {
    return embedding as number[];
  }
  if (typeof embedding !== 'string') {
    return undefined;
  }
  const bytes = Buffer.from(embedding, 'base64');
  return Array.from(new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4));
}

/**
 * Every problem with one request's answer, judged against the one upstream request it caused
 * (`body`): the operation's own wire format, nothing lost, duplicated or foreign.
 */
function check(plan: Plan, got: Received, body: Record<string, unknown>, fail: (what: string) => void): void {
  if (got.status !== 200 || got.errors.length > 0) {
    fail(`status ${got.status}, errors ${JSON.stringify(got.errors).slice(0, 300)}`);
    return;
  }
  // The upstream got this client's request (its own prompt, not a neighbour's).
  const sent =
    plan.op === 'completion' ? String(body.prompt) : plan.op === 'embedding' ? '' : lastUserText(body.messages);
  if (plan.op !== 'embedding' && words(sent).join(' ') !== promptOf(plan)) {
    fail(`the upstream received prompt ${JSON.stringify(sent.slice(0, 200))}`);
  }
  switch (plan.op) {
    case 'completion':
      return checkCompletionStream(plan, got, body, fail);
    case 'chat-stream':
      return checkChatStream(plan, got, body, fail);
    case 'chat':
      return checkChat(plan, got, body, fail);
    case 'embedding':
      return checkEmbeddings(plan, got, body, fail);
  }
}

function checkCompletionStream(
  plan: Plan,
  got: Received,
  body: Record<string, unknown>,
  fail: (what: string) => void,
): void {
  const expected = upstreamTokens(String(body.prompt), Number(body.max_tokens)).join('');
  if (got.ids.size !== 1) {
    fail(`${got.ids.size} distinct response ids`);
  }
  const indexes = [...got.texts.keys()].sort((a, b) => a - b);
  if (!got.disconnected && indexes.join() !== Array.from({ length: plan.n }, (_, k) => k).join()) {
    fail(`choice indexes ${indexes.join()}`);
  }
  for (const [index, text] of got.texts) {
    const ok = got.disconnected ? expected.startsWith(text) : text === expected;
    if (!ok) {
      fail(
        `choice ${index}: got ${JSON.stringify(text.slice(0, 200))}, upstream sent ${JSON.stringify(expected.slice(0, 200))}`,
      );
    }
    if (!got.disconnected && got.finishes.get(index)?.length !== 1) {
      fail(`choice ${index} has ${got.finishes.get(index)?.length ?? 0} finish_reasons`);
    }
  }
  if (!got.disconnected) {
    if (!got.done) {
      fail('no [DONE]');
    }
    const tokens = upstreamTokens(String(body.prompt), Number(body.max_tokens)).length * plan.n;
    checkUsageChunk(plan, got, tokens, fail);
  }
}

function checkUsageChunk(plan: Plan, got: Received, tokens: number, fail: (what: string) => void): void {
  if (plan.usage && (got.usage.length !== 1 || got.usage[0]?.completion_tokens !== tokens)) {
    fail(`usage chunks ${JSON.stringify(got.usage)}, upstream counted ${tokens} tokens`);
  }
  if (!plan.usage && got.usage.length > 0) {
    fail('a usage chunk nobody asked for');
  }
}

function checkChatStream(plan: Plan, got: Received, body: Record<string, unknown>, fail: (what: string) => void): void {
  if (got.ids.size !== 1) {
    fail(`${got.ids.size} distinct response ids`);
  }
  if ([...got.objects].join() !== 'chat.completion.chunk') {
    fail(`chunk objects ${[...got.objects].join()}`);
  }
  const seen = [...new Set([...got.texts.keys(), ...got.calls.keys(), ...got.firstRoles.keys()])].sort((a, b) => a - b);
  if (!got.disconnected && seen.join() !== Array.from({ length: plan.n }, (_, k) => k).join()) {
    fail(`choice indexes ${seen.join()}`);
  }
  let tokens = 0;
  for (const index of seen) {
    const want = expectedChat(body, index);
    tokens += want.tokens;
    if (got.firstRoles.get(index) !== 'assistant') {
      fail(`choice ${index}: first delta has role ${JSON.stringify(got.firstRoles.get(index))}`);
    }
    const text = got.texts.get(index) ?? '';
    const content = want.content ?? '';
    if (got.disconnected ? !content.startsWith(text) : text !== content) {
      fail(
        `choice ${index}: got ${JSON.stringify(text.slice(0, 200))}, upstream sent ${JSON.stringify(content.slice(0, 200))}`,
      );
    }
    const calls = [...(got.calls.get(index) ?? new Map<number, StreamedCall>()).entries()].sort((a, b) => a[0] - b[0]);
    if (!got.disconnected && calls.length !== want.calls.length) {
      fail(`choice ${index}: ${calls.length} tool calls, upstream sent ${want.calls.length}`);
    }
    for (const [k, call] of calls) {
      const w = want.calls[k];
      const argsOk = got.disconnected ? (w?.arguments ?? '').startsWith(call.args) : call.args === w?.arguments;
      if (w === undefined || call.id !== w.id || call.name !== w.name || !argsOk || call.repeatedHeader > 0) {
        fail(
          `choice ${index} tool call ${k}: got ${JSON.stringify(call).slice(0, 300)}, upstream sent ${JSON.stringify(w)}`,
        );
      }
    }
    if (!got.disconnected && (got.finishes.get(index) ?? []).join() !== want.finish) {
      fail(`choice ${index}: finish_reasons ${JSON.stringify(got.finishes.get(index))}, upstream sent ${want.finish}`);
    }
  }
  if (!got.disconnected) {
    if (!got.done) {
      fail('no [DONE]');
    }
    checkUsageChunk(plan, got, tokens, fail);
  }
}

function checkChat(plan: Plan, got: Received, body: Record<string, unknown>, fail: (what: string) => void): void {
  const res = got.json as {
    id?: unknown;
    object?: unknown;
    choices?: {
      index: number;
      message?: { role?: unknown; content?: unknown; tool_calls?: unknown };
      finish_reason?: unknown;
    }[];
    usage?: { completion_tokens?: unknown };
  };
  if (res.object !== 'chat.completion' || typeof res.id !== 'string') {
    fail(`object ${String(res.object)}, id ${String(res.id)}`);
  }
  const choices = res.choices ?? [];
  if (choices.map((c) => c.index).join() !== Array.from({ length: plan.n }, (_, k) => k).join()) {
    fail(`choice indexes ${choices.map((c) => c.index).join()}`);
  }
  let tokens = 0;
  for (const c of choices) {
    const want = expectedChat(body, c.index);
    tokens += want.tokens;
    const calls = want.calls.map((t) => ({
      id: t.id,
      type: 'function',
      function: { name: t.name, arguments: t.arguments },
    }));
    const message = c.message ?? {};
    const toolsOk =
      want.calls.length === 0
        ? message.tool_calls === undefined || (Array.isArray(message.tool_calls) && message.tool_calls.length === 0)
        : JSON.stringify(message.tool_calls) === JSON.stringify(calls);
    if (
      message.role !== 'assistant' ||
      message.content !== want.content ||
      !toolsOk ||
      c.finish_reason !== want.finish
    ) {
      fail(
        `choice ${c.index}: got ${JSON.stringify(c).slice(0, 300)}, upstream sent ${JSON.stringify(want).slice(0, 300)}`,
      );
    }
  }
  if (res.usage?.completion_tokens !== tokens) {
    fail(`usage ${JSON.stringify(res.usage)}, upstream counted ${tokens} completion tokens`);
  }
}

function checkEmbeddings(plan: Plan, got: Received, body: Record<string, unknown>, fail: (what: string) => void): void {
  const res = got.json as {
    object?: unknown;
    data?: { object?: unknown; index?: unknown; embedding?: unknown }[];
    usage?: { prompt_tokens?: unknown; total_tokens?: unknown };
  };
  const inputs = embeddingInputsOf(plan);
  const dimensions = typeof body.dimensions === 'number' ? body.dimensions : FAKE_EMBEDDING_DIMENSIONS;
  if (dimensions !== (plan.dimensions ?? FAKE_EMBEDDING_DIMENSIONS)) {
    fail(`the upstream was asked for ${dimensions} dimensions`);
  }
  const data = res.data ?? [];
  if (res.object !== 'list' || data.length !== inputs.length) {
    fail(`object ${String(res.object)} with ${data.length} vectors for ${inputs.length} inputs`);
    return;
  }
  data.forEach((d, k) => {
    const want = fakeEmbedding(inputs[k]!, dimensions);
    const vector = vectorOf(d.embedding);
    if (plan.base64 !== (typeof d.embedding === 'string')) {
      fail(`vector ${k} is ${typeof d.embedding}, asked for ${plan.base64 ? 'base64' : 'float'}`);
    }
    if (d.object !== 'embedding' || d.index !== k || vector === undefined || vector.join() !== want.join()) {
      fail(
        `vector ${k}: index ${String(d.index)}, ${JSON.stringify(vector?.slice(0, 3))}…, expected ${JSON.stringify(want.slice(0, 3))}…`,
      );
    }
  });
  const tokens = inputs.reduce((t, s) => t + words(s).length, 0);
  if (res.usage?.prompt_tokens !== tokens || res.usage.total_tokens !== tokens) {
    fail(`usage ${JSON.stringify(res.usage)}, upstream counted ${tokens} tokens`);
  }
}

describe('soak', () => {
  let upstream: FakeUpstream;
  let stack: Stack;
  let key: string;
  let gateways: string[];

  beforeAll(async () => {
    ({ upstream, stack } = await startUpstreamStack('soak', { workers: 2 }, (url) => [
      upstreamDeployment('up', url),
      { ...upstreamDeployment('up-embed', url), model_info: { mode: 'embedding' } },
    ]));
    // One token drives every request: it may have all of them in flight at once, with room
    // for clients that disconnected and started their next request before the gateway saw
    // the disconnect (and released the slot).
    key = await stack.createKey({ max_parallel_requests: 2 * CONCURRENCY });
    gateways = [stack.baseUrl, await stack.addGateway()];
  });

  afterAll(async () => {
    await stack?.stop();
    await upstream?.close();
  });

  it(
    `${STREAMS} mixed requests (completion and chat streams, chat, embeddings): nothing lost, duplicated or misrouted, checked against the upstream`,
    async () => {
      const plans = Array.from({ length: STREAMS }, (_, i) => planFor(i));
      const results: Received[] = new Array<Received>(STREAMS);
      const started = Date.now();
      let next = 0;
      await Promise.all(
        Array.from({ length: Math.min(CONCURRENCY, STREAMS) }, async () => {
          while (next < STREAMS) {
            const plan = plans[next++]!;
            results[plan.i] = await runRequest(gateways[plan.gateway]!, key, plan);
          }
        }),
      );
      const duration = Date.now() - started;

      // What the upstream received, per request: exactly one request each (no re-runs).
      const received = new Map<string, { path: string; body: Record<string, unknown> }[]>();
      for (const r of upstream.requests) {
        const probe = String(r.body.probe);
        received.set(probe, [...(received.get(probe) ?? []), { path: r.path, body: r.body }]);
      }
      const problems: string[] = [];
      let verified = 0;
      for (const plan of plans) {
        const got = results[plan.i]!;
        const own = received.get(`soak-${plan.i}`) ?? [];
        const fail = (what: string) => problems.push(`request ${plan.i} (${JSON.stringify(plan)}): ${what}`);
        if (own.length !== 1) {
          fail(`the upstream received it ${own.length} times`);
          continue;
        }
        if (own[0]!.path !== PATHS[plan.op]) {
          fail(`the upstream received it on ${own[0]!.path}`);
          continue;
        }
        check(plan, got, own[0]!.body, fail);
        verified += got.chunks;
      }

      // One usage record per request, never two; completed requests are recorded as ok.
      const records = new Map<string, Record<string, unknown>[]>();
      await expect
        .poll(
          async () => {
            records.clear();
            for (const r of await usageRecords(stack)) {
              records.set(String(r.user_id), [...(records.get(String(r.user_id)) ?? []), r]);
            }
            return records.size;
          },
          { timeout: 10_000, interval: 250 },
        )
        .toBe(STREAMS);
      for (const plan of plans) {
        const own = records.get(`soak-${plan.i}`) ?? [];
        const allowed = plan.disconnectAfter === undefined ? ['ok'] : ['ok', 'client_disconnected'];
        if (own.length !== 1 || !allowed.includes(String(own[0]?.outcome))) {
          const brief = own.map((r) => ({ ...r, user_agent: undefined, ip: undefined, prompt_tokens: undefined }));
          problems.push(`request ${plan.i} (${plan.op}): usage records ${JSON.stringify(brief)}`);
        }
      }
      // Nothing is left running anywhere.
      await expect.poll(() => upstream.inFlight(), { timeout: 5_000 }).toBe(0);
      expect(await queueLength(stack, 'active')).toBe(0);

      const count = (op: Op) => plans.filter((p) => p.op === op).length;
      const times = results.map((r) => r.ms).sort((a, b) => a - b);
      const disconnected = results.filter((r) => r.disconnected).length;
      const tools = plans.filter((p) => p.tool).length;
      const summary =
        `soak: ${STREAMS} requests (${count('completion')} completion streams, ${count('chat-stream')} chat streams, ` +
        `${count('chat')} non-stream chats, ${tools} of the chats tool calls, ${count('embedding')} embeddings; ` +
        `${disconnected} disconnected midway), ${verified} chunks verified, ` +
        `${(duration / 1000).toFixed(1)} s, request p50 ${times[Math.floor(STREAMS / 2)]} ms, ` +
        `p99 ${times[Math.floor(STREAMS * 0.99)]} ms, max ${times.at(-1)} ms`;
      console.log(summary);
      expect(problems.slice(0, 10), `${problems.length} problems; ${summary}`).toEqual([]);
      expect(disconnected).toBeGreaterThan(0);
      for (const op of ['completion', 'chat-stream', 'chat', 'embedding'] as const) {
        expect(count(op), `${op} requests in the mix`).toBeGreaterThan(0);
      }
      expect(duration, summary).toBeLessThan(TOTAL_BUDGET_MS);
    },
    TOTAL_BUDGET_MS + 60_000,
  );
});
