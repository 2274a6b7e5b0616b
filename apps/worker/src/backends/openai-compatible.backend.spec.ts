import { createServer } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ChoiceDelta, Deployment } from '@app/common';
import {
  FAKE_UPSTREAM_KNOBS,
  fakeBulkText,
  startFakeUpstream,
  type FakeUpstream,
} from '../../../../test/support/fake-upstream';
import { BackendError } from './backend.error';
import type { BackendRequest, StreamEvent } from './llm-backend';
import { OpenAICompatibleBackend } from './openai-compatible.backend';
import { retryAfterMs } from './upstream-errors';
import { sseMessages } from './upstream-sse';

const API_KEY = 'sk-test-SECRET-0123456789abcdef';

let fake: FakeUpstream;
let backend: OpenAICompatibleBackend;

beforeAll(async () => {
  fake = await startFakeUpstream();
  backend = new OpenAICompatibleBackend({ idleTimeoutMs: 300 });
});

afterAll(async () => {
  await backend.close();
  await fake.close();
});

function deployment(over: Partial<Deployment> = {}): Deployment {
  return {
    id: 'm#0',
    modelName: 'm',
    provider: 'openai',
    upstreamModel: 'upstream-llama',
    apiBase: fake.url,
    apiKey: API_KEY,
    ttftMs: 0,
    itlMs: 0,
    extraBodyAllowed: FAKE_UPSTREAM_KNOBS,
    ...over,
  };
}

function request(params: Record<string, unknown>, over: Partial<BackendRequest> = {}): BackendRequest {
  return {
    op: 'completion',
    deployment: deployment(),
    params: { prompt: 'hello world', ...params },
    signal: new AbortController().signal,
    deadline: Date.now() + 10_000,
    ...over,
  };
}

/** Runs a stream to its end; returns what was yielded and the error it ended with, if any. */
async function drain(stream: AsyncIterable<StreamEvent>): Promise<{ events: StreamEvent[]; error: unknown }> {
  const events: StreamEvent[] = [];
  try {
    for await (const e of stream) {
      events.push(e);
    }
    return { events, error: undefined };
  } catch (error) {
    return { events, error };
  }
}

function failure(p: Promise<unknown>): Promise<unknown> {
  return p.then(
    () => expect.unreachable('expected a failure'),
    (e: unknown) => e,
  );
}

function chunks(events: StreamEvent[]): ChoiceDelta[] {
  return events.flatMap((e) => (e.type === 'chunk' ? (e.choices as ChoiceDelta[]) : []));
}

function lastRequest() {
  const r = fake.requests.at(-1);
  if (r === undefined) {
    throw new Error('the fake upstream saw no request');
  }
  return r;
}

async function eventually(check: () => boolean, ms = 2_000): Promise<void> {
  const end = Date.now() + ms;
  while (!check()) {
    if (Date.now() > end) {
      throw new Error('condition not reached in time');
    }
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe('OpenAICompatibleBackend: requests', () => {
  it('forwards OpenAI params and the allowed extensions only, sets model and stream, sends the key', async () => {
    const params = {
      top_k: 5,
      vendor: { nested: [1, 'two'] },
      access_token: 'sk-not-a-credential',
      some_vllm_private: true,
      temperature: 0.3,
      seed: 7,
      stream_options: { include_usage: true },
    };
    const allowed = deployment({ extraBodyAllowed: ['vendor'] });
    await backend.complete(request(params, { deployment: allowed }));
    const { body, headers } = lastRequest();
    expect(body).toEqual({
      prompt: 'hello world',
      vendor: { nested: [1, 'two'] },
      temperature: 0.3,
      seed: 7,
      model: 'upstream-llama',
      stream: false,
    });
    expect(headers.authorization).toBe(`Bearer ${API_KEY}`);
    expect(headers['content-type']).toBe('application/json');
  });

  it('drops every non-OpenAI field when the deployment allows none', async () => {
    await backend.complete(
      request({ top_k: 5, fake_ttft_ms: 1, user: 'u-1' }, { deployment: deployment({ extraBodyAllowed: [] }) }),
    );
    expect(lastRequest().body).toEqual({ prompt: 'hello world', user: 'u-1', model: 'upstream-llama', stream: false });
  });

  it('reads a non-stream body up to its limit intact (40 MB of text with escapes and astral characters)', async () => {
    const size = 40 * 1024 * 1024;
    const r = await backend.complete(request({ fake_text_bytes: size }));
    const output = r.output as ChoiceDelta[];
    expect(output).toHaveLength(1);
    expect(output[0]?.text.length).toBe(size);
    expect(output[0]?.text === fakeBulkText(size, 0)).toBe(true);
  });

  it('always asks a streaming upstream for usage', async () => {
    await drain(backend.stream(request({ best_of: 1 })));
    const { body } = lastRequest();
    expect(body).toMatchObject({
      stream: true,
      stream_options: { include_usage: true },
      best_of: 1,
      model: 'upstream-llama',
    });
  });

  it('sends no Authorization header without an api key', async () => {
    await backend.complete({ ...request({}), deployment: deployment({ apiKey: undefined }) });
    expect(lastRequest().headers.authorization).toBeUndefined();
  });

  it('reuses keep-alive connections across requests, streamed or not', async () => {
    const before = fake.requests.length;
    for (let i = 0; i < 4; i++) {
      await backend.complete(request({}));
      await drain(backend.stream(request({})));
    }
    const ports = fake.requests.slice(before).map((r) => r.remotePort);
    expect(ports).toHaveLength(8);
    // undici may open a second socket while the first is being released, never one per request.
    expect(new Set(ports).size).toBeLessThanOrEqual(2);
  });

  it('reads the body to its end after [DONE], so even a late end keeps the socket', async () => {
    const before = fake.requests.length;
    for (let i = 0; i < 5; i++) {
      const { events } = await drain(backend.stream(request({ fake_end_delay_ms: 30 })));
      expect(events.at(-1)?.type).toBe('usage');
    }
    const ports = fake.requests.slice(before).map((r) => r.remotePort);
    expect(ports).toHaveLength(5);
    expect(new Set(ports).size).toBeLessThanOrEqual(2);
  });
});

describe('OpenAICompatibleBackend: responses', () => {
  it('normalises a non-stream response to the OpenAI choice fields', async () => {
    const res = await backend.complete(request({ prompt: ['a b', 'c'], n: 2, max_tokens: 2 }));
    expect(res.output).toEqual([
      { index: 0, text: ' echo: a', logprobs: null, finish_reason: 'length' },
      { index: 1, text: ' echo: a', logprobs: null, finish_reason: 'length' },
      { index: 2, text: ' echo: c', logprobs: null, finish_reason: 'stop' },
      { index: 3, text: ' echo: c', logprobs: null, finish_reason: 'stop' },
    ]);
    expect(res.usage).toEqual({ prompt_tokens: 3, completion_tokens: 8, total_tokens: 11 });
    expect(res.system_fingerprint).toBe('fp_fake');
  });

  it('normalises stream chunks, keeps the fingerprint and yields usage last', async () => {
    const { events, error } = await drain(backend.stream(request({ prompt: 'x y', n: 2 })));
    expect(error).toBeUndefined();
    for (const c of chunks(events)) {
      expect(Object.keys(c).sort()).toEqual(['finish_reason', 'index', 'logprobs', 'text']);
    }
    expect(
      events.filter((e) => e.type === 'chunk').every((e) => e.type === 'chunk' && e.system_fingerprint === 'fp_fake'),
    ).toBe(true);
    const text = (i: number) =>
      chunks(events)
        .filter((c) => c.index === i)
        .map((c) => c.text)
        .join('');
    expect([text(0), text(1)]).toEqual([' echo: x y', ' echo: x y']);
    expect(chunks(events).filter((c) => c.finish_reason === 'stop')).toHaveLength(2);
    expect(events.at(-1)).toEqual({
      type: 'usage',
      usage: { prompt_tokens: 2, completion_tokens: 6, total_tokens: 8 },
    });
  });

  it('turns a JSON answer to a stream request into chunk + usage events', async () => {
    const { events, error } = await drain(backend.stream(request({ prompt: 'p q', fake_ignore_stream: true })));
    expect(error).toBeUndefined();
    expect(events).toEqual([
      {
        type: 'chunk',
        choices: [{ index: 0, text: ' echo: p q', logprobs: null, finish_reason: 'stop' }],
        system_fingerprint: 'fp_fake',
      },
      { type: 'usage', usage: { prompt_tokens: 2, completion_tokens: 3, total_tokens: 5 } },
    ]);
  });

  it('runs concurrent requests on parallel connections', async () => {
    await Promise.all(Array.from({ length: 6 }, () => backend.complete(request({ fake_ttft_ms: 100 }))));
    expect(fake.maxInFlight()).toBeGreaterThanOrEqual(6);
  });

  it('decodes UTF-8 split across reads', async () => {
    const { events, error } = await drain(backend.stream(request({ prompt: 'héllo wörld 😀', fake_chunk_bytes: 1 })));
    expect(error).toBeUndefined();
    expect(
      chunks(events)
        .map((c) => c.text)
        .join(''),
    ).toBe(' echo: héllo wörld 😀');
  });
});

interface Expected {
  status: number;
  type: string;
  failover: boolean;
  code?: string | null;
  param?: string | null;
  message?: RegExp;
  retryAfterMs?: number;
}

function expectBackendError(err: unknown, e: Expected): void {
  expect(err).toBeInstanceOf(BackendError);
  const b = err as BackendError;
  expect({ status: b.status, type: b.type, failover: b.failover }).toEqual({
    status: e.status,
    type: e.type,
    failover: e.failover,
  });
  if (e.code !== undefined) {
    expect(b.code).toBe(e.code);
  }
  if (e.param !== undefined) {
    expect(b.param).toBe(e.param);
  }
  if (e.message !== undefined) {
    expect(b.message).toMatch(e.message);
  }
  if (e.retryAfterMs !== undefined) {
    expect(b.retryAfterMs).toBe(e.retryAfterMs);
  }
  expect(b.message).not.toContain(API_KEY);
}

/** Failures that look the same whether the request streams or not. */
const statusCases: [string, Record<string, unknown>, Partial<Deployment>, Expected][] = [
  [
    'upstream 400 passes through',
    { fake_fail: 'status:400', fake_error_message: 'max_tokens is too large' },
    {},
    { status: 400, type: 'invalid_request_error', failover: false, message: /^max_tokens is too large$/ },
  ],
  [
    'context length keeps its code and param',
    { fake_fail: 'context-length' },
    {},
    { status: 400, type: 'invalid_request_error', failover: false, code: 'context_length_exceeded', param: 'prompt' },
  ],
  [
    'upstream 422 passes through',
    { fake_fail: 'status:422', fake_error_message: 'unprocessable' },
    {},
    { status: 422, type: 'invalid_request_error', failover: false, message: /unprocessable/ },
  ],
  [
    'upstream 401 (bad gateway key) becomes 502',
    {},
    { upstreamModel: 'unauthorized' },
    { status: 502, type: 'server_error', failover: true, message: /credentials \(status 401\)/ },
  ],
  [
    'upstream 403 becomes 502',
    { fake_fail: 'status:403' },
    {},
    { status: 502, type: 'server_error', failover: true, message: /credentials \(status 403\)/ },
  ],
  [
    'upstream 404 becomes 502 model not found',
    {},
    { upstreamModel: 'missing-model' },
    { status: 502, type: 'server_error', failover: true, message: /upstream model not found/ },
  ],
  [
    'upstream 429 keeps its retry-after',
    { fake_fail: 'status:429' },
    {},
    { status: 429, type: 'requests', failover: true, code: 'rate_limit_exceeded', retryAfterMs: 1000 },
  ],
  [
    'upstream 500 becomes 502',
    { fake_fail: 'status:500' },
    {},
    { status: 502, type: 'server_error', failover: true, message: /upstream failed \(status 500\)/ },
  ],
  [
    'upstream 503 becomes 502',
    { fake_fail: 'status:503' },
    {},
    { status: 502, type: 'server_error', failover: true, message: /status 503/ },
  ],
  [
    'vLLM error frame maps its int code to a status',
    { fake_fail: 'error-frame' },
    {},
    { status: 400, type: 'invalid_request_error', failover: false, code: null, message: /^boom$/ },
  ],
  [
    'finish_reason abort is an upstream failure',
    { fake_fail: 'finish-abort' },
    {},
    { status: 502, type: 'server_error', failover: true, message: /abort/ },
  ],
];

describe.each([false, true])('OpenAICompatibleBackend: upstream failures (stream=%s)', (stream) => {
  const run = async (req: BackendRequest): Promise<{ error: unknown; yielded: number }> => {
    if (!stream) {
      return { error: await failure(backend.complete(req)), yielded: 0 };
    }
    const { events, error } = await drain(backend.stream(req));
    return { error, yielded: events.length };
  };

  it.each(statusCases)('%s', async (_name, params, dep, expected) => {
    const { error, yielded } = await run({ ...request(params), deployment: deployment(dep) });
    expectBackendError(error, expected);
    expect(yielded).toBe(0);
  });

  it('connection refused → 503 upstream unavailable', async () => {
    const port = await closedPort();
    const { error } = await run({ ...request({}), deployment: deployment({ apiBase: `http://127.0.0.1:${port}/v1` }) });
    expectBackendError(error, {
      status: 503,
      type: 'server_error',
      failover: true,
      message: /upstream unavailable \(ECONNREFUSED\)/,
    });
  });

  it('garbage → 502', async () => {
    const { error } = await run(request({ fake_fail: 'garbage' }));
    expectBackendError(error, {
      status: 502,
      type: 'server_error',
      failover: true,
      message: stream ? /protocol error/ : /invalid response/,
    });
  });

  it('no choices array → 502', async () => {
    const { error } = await run(request({ fake_fail: 'no-choices' }));
    expectBackendError(error, { status: 502, type: 'server_error', failover: true, message: /choices/ });
  });

  it('a hanging upstream fails with 504 at the deadline and the socket is released', async () => {
    const t0 = Date.now();
    const { error } = await run(request({ fake_fail: 'hang' }, { deadline: Date.now() + 250 }));
    expectBackendError(error, { status: 504, type: 'server_error', failover: false, code: 'timeout' });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(200);
    expect(Date.now() - t0).toBeLessThan(2_000);
    await eventually(() => fake.inFlight() === 0);
  });

  it('a deadline already past fails with 504 without calling the upstream', async () => {
    const before = fake.requests.length;
    const { error } = await run(request({}, { deadline: Date.now() - 1 }));
    expectBackendError(error, { status: 504, type: 'server_error', failover: false, code: 'timeout' });
    expect(fake.requests.length).toBe(before);
  });

  it('an abort rejects with the signal reason and releases the socket', async () => {
    const ctl = new AbortController();
    const reason = new Error('client disconnected');
    setTimeout(() => ctl.abort(reason), 50);
    const { error } = await run(request({ fake_fail: 'hang' }, { signal: ctl.signal }));
    expect(error).toBe(reason);
    await eventually(() => fake.inFlight() === 0);
  });

  it('never puts the api key in an error message', async () => {
    const leaky = { fake_fail: 'status:400', fake_error_message: `bad key ${API_KEY} (Bearer ${API_KEY})` };
    const { error } = await run(request(leaky));
    expect(error).toBeInstanceOf(BackendError);
    expect((error as BackendError).message).not.toContain(API_KEY);
    expect((error as BackendError).message).not.toContain('SECRET');
    expect((error as BackendError).message).toContain('bad key');
  });
});

describe('OpenAICompatibleBackend: broken streams', () => {
  it('a reset after some tokens → 502 terminated, after yielding them', async () => {
    const { events, error } = await drain(
      backend.stream(request({ prompt: 'a b c d', fake_fail: 'reset-after:2', fake_itl_ms: 30 })),
    );
    expect(chunks(events).map((c) => c.text)).toEqual([' echo:', ' a']);
    expectBackendError(error, {
      status: 502,
      type: 'server_error',
      failover: true,
      message: /terminated unexpectedly/,
    });
  });

  it('EOF without [DONE] → 502 terminated', async () => {
    const { events, error } = await drain(backend.stream(request({ prompt: 'a b c d', fake_fail: 'eof-after:3' })));
    expect(chunks(events)).toHaveLength(3);
    expectBackendError(error, {
      status: 502,
      type: 'server_error',
      failover: true,
      message: /terminated unexpectedly/,
    });
  });

  it('a stall mid-stream → 504 after the idle timeout, socket released', async () => {
    const t0 = Date.now();
    const { events, error } = await drain(backend.stream(request({ prompt: 'a b c', fake_fail: 'stall-after:1' })));
    expect(chunks(events)).toHaveLength(1);
    expectBackendError(error, { status: 504, type: 'server_error', failover: true, message: /stalled/ });
    expect(Date.now() - t0).toBeGreaterThanOrEqual(250);
    await eventually(() => fake.inFlight() === 0);
  });

  it('does not count a slow consumer as an upstream stall', async () => {
    const events: StreamEvent[] = [];
    for await (const e of backend.stream(request({ prompt: 'a', max_tokens: 1 }))) {
      events.push(e);
      await new Promise((r) => setTimeout(r, 400)); // longer than idleTimeoutMs
    }
    expect(events.at(-1)?.type).toBe('usage');
  });

  it('a frame over 1 MiB → 502 protocol error', async () => {
    const { error } = await drain(backend.stream(request({ fake_fail: 'oversize' })));
    expectBackendError(error, { status: 502, type: 'server_error', failover: true, message: /exceeds 1 MiB/ });
  });

  it('a reset before the response of a non-stream call → 502 (reached, then broke the exchange)', async () => {
    const error = await failure(backend.complete(request({ fake_fail: 'reset-after:0' })));
    expectBackendError(error, { status: 502, type: 'server_error', failover: true, message: /closed the connection/ });
  });

  it('a truncated non-stream body → 502 invalid response', async () => {
    const error = await failure(backend.complete(request({ fake_fail: 'eof-after:0' })));
    expectBackendError(error, { status: 502, type: 'server_error', failover: true, message: /not JSON/ });
  });

  it('stopping early releases the connection', async () => {
    for await (const e of backend.stream(request({ prompt: 'a b c d e', fake_itl_ms: 50 }))) {
      expect(e.type).toBe('chunk');
      break;
    }
    await eventually(() => fake.inFlight() === 0);
  });
});

describe('sseMessages', () => {
  const reader = (parts: string[]) => {
    const bytes = parts.map((p) => new TextEncoder().encode(p));
    return () => Promise.resolve(bytes.shift() ?? null);
  };
  const all = async (parts: string[]) => {
    const out: { event?: string; data: string }[] = [];
    for await (const m of sseMessages(reader(parts))) {
      out.push(m.event === undefined ? { data: m.data } : { event: m.event, data: m.data });
    }
    return out;
  };

  it('skips comments and foreign events, keeps error events, stops at the exact [DONE]', async () => {
    const parts = [
      ': ping\n\ndata: {"a"',
      ':1}\n\nevent: progress\ndata: x\n\n',
      'event: error\ndata: {}\n\n',
      'data: [DONE]\n\n',
    ];
    expect(await all(parts)).toEqual([{ data: '{"a":1}' }, { event: 'error', data: '{}' }]);
  });

  it('does not take a near-miss sentinel for the end', async () => {
    await expect(all(['data: [DONE] \n\n'])).rejects.toMatchObject({ status: 502, message: /terminated unexpectedly/ });
  });
});

describe('retryAfterMs', () => {
  it('prefers retry-after-ms, then retry-after seconds or an HTTP date', () => {
    expect(retryAfterMs({ 'retry-after-ms': '250.5', 'retry-after': '9' })).toBe(251);
    expect(retryAfterMs({ 'retry-after': '2' })).toBe(2000);
    expect(retryAfterMs({ 'retry-after': new Date(10_000).toUTCString() }, 7_000)).toBe(3000);
    expect(retryAfterMs({ 'retry-after': 'soon' })).toBeUndefined();
    expect(retryAfterMs({})).toBeUndefined();
  });
});

/** A port with nothing listening on it. */
async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (address === null || typeof address === 'string') {
    throw new Error('no port');
  }
  return address.port;
}
