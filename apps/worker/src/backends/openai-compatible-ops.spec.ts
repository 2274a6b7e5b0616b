import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import type { ChatChoice, ChatChunkChoice, Deployment, EmbeddingObject, OperationName } from '@app/common';
import { BackendError } from './backend.error';
import type { BackendRequest, StreamEvent } from './llm-backend';
import { OpenAICompatibleBackend } from './openai-compatible.backend';

/**
 * Chat and embeddings against a real local HTTP server that each test scripts: it answers
 * with the JSON body or the SSE frames the test gives, and records what it was sent.
 */

interface Seen {
  url: string;
  body: Record<string, unknown>;
}

type Reply =
  | { status?: number; json: unknown }
  /** Frames are JSON-encoded unless strings; `[DONE]` is added unless `done: false`. */
  | { sse: unknown[]; done?: boolean };

let server: Server;
let apiBase: string;
let seen: Seen[] = [];
let reply: (s: Seen) => Reply = () => ({ json: {} });
let backend: OpenAICompatibleBackend;

beforeAll(async () => {
  server = createServer((req, res) => {
    const parts: Buffer[] = [];
    req.on('data', (b: Buffer) => parts.push(b));
    req.on('end', () => {
      const s: Seen = {
        url: req.url ?? '',
        body: JSON.parse(Buffer.concat(parts).toString('utf8')) as Record<string, unknown>,
      };
      seen.push(s);
      const r = reply(s);
      if ('json' in r) {
        res.writeHead(r.status ?? 200, { 'content-type': 'application/json' });
        res.end(JSON.stringify(r.json));
        return;
      }
      res.writeHead(200, { 'content-type': 'text/event-stream' });
      for (const frame of r.sse) {
        res.write(typeof frame === 'string' ? frame : `data: ${JSON.stringify(frame)}\n\n`);
      }
      res.end(r.done === false ? '' : 'data: [DONE]\n\n');
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  apiBase = `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1`;
  backend = new OpenAICompatibleBackend({ idleTimeoutMs: 1_000 });
});

afterAll(async () => {
  await backend.close();
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
});

beforeEach(() => {
  seen = [];
});

function request(op: OperationName, params: Record<string, unknown>, over: Partial<Deployment> = {}): BackendRequest {
  const deployment: Deployment = {
    id: 'm#0',
    modelName: 'm',
    provider: 'openai',
    upstreamModel: 'up-model',
    apiBase,
    ttftMs: 0,
    itlMs: 0,
    extraBodyAllowed: ['top_k'],
    ...over,
  };
  return { op, deployment, params, signal: new AbortController().signal, deadline: Date.now() + 10_000 };
}

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

function chatChunks(events: StreamEvent[]): ChatChunkChoice[] {
  return events.flatMap((e) => (e.type === 'chunk' ? (e.choices as ChatChunkChoice[]) : []));
}

const USAGE = { prompt_tokens: 3, completion_tokens: 2, total_tokens: 5 };
const chatBody = (choices: unknown[]) => ({ id: 'c', object: 'chat.completion', choices, usage: USAGE });
const frame = (choices: unknown[], extra: Record<string, unknown> = {}) => ({
  id: 'c',
  object: 'chat.completion.chunk',
  choices,
  ...extra,
});
const messages = [{ role: 'user', content: 'hi' }];

describe('OpenAICompatibleBackend: routes and bodies per operation', () => {
  it('calls the route of each operation on the same api_base', async () => {
    reply = (s) =>
      s.url.endsWith('/embeddings')
        ? { json: { data: [{ object: 'embedding', index: 0, embedding: [1] }], usage: USAGE } }
        : s.url.endsWith('/chat/completions')
          ? { json: chatBody([{ index: 0, message: { role: 'assistant', content: 'x' }, finish_reason: 'stop' }]) }
          : { json: { choices: [{ index: 0, text: 'x', finish_reason: 'stop' }], usage: USAGE } };
    for (let i = 0; i < 2; i++) {
      await backend.complete(request('chat', { messages }));
      await backend.complete(request('embedding', { input: 'x' }));
      await backend.complete(request('completion', { prompt: 'x' }));
    }
    expect(seen.map((s) => s.url)).toEqual([
      '/v1/chat/completions',
      '/v1/embeddings',
      '/v1/completions',
      '/v1/chat/completions',
      '/v1/embeddings',
      '/v1/completions',
    ]);
  });

  it('forwards only chat parameters (and allowed extras) to /chat/completions', async () => {
    reply = () => ({ json: chatBody([]) });
    const tools = [{ type: 'function', function: { name: 'f', parameters: { type: 'object' } } }];
    await backend.complete(
      request('chat', {
        messages,
        tools,
        tool_choice: 'auto',
        max_completion_tokens: 9,
        prompt: 'not a chat field',
        echo: true,
        best_of: 2,
        top_k: 4,
        access_token: 'sk-nope',
        stream_options: { include_usage: true },
      }),
    );
    expect(seen[0]?.body).toEqual({
      messages,
      tools,
      tool_choice: 'auto',
      max_completion_tokens: 9,
      top_k: 4,
      model: 'up-model',
      stream: false,
    });
  });

  it('sends embeddings their own fields only, with no stream fields at all', async () => {
    reply = () => ({ json: { data: [], usage: USAGE } });
    await backend.complete(
      request('embedding', {
        input: ['a', 'b'],
        dimensions: 8,
        encoding_format: 'base64',
        user: 'u',
        n: 2,
        stream: true,
        stream_options: { include_usage: true },
        messages,
      }),
    );
    expect(seen[0]?.body).toEqual({
      input: ['a', 'b'],
      dimensions: 8,
      encoding_format: 'base64',
      user: 'u',
      model: 'up-model',
    });
  });

  it('always asks a chat stream for usage, whatever the client sent', async () => {
    reply = () => ({ sse: [] });
    await drain(backend.stream(request('chat', { messages, stream_options: { include_usage: false } })));
    expect(seen[0]?.url).toBe('/v1/chat/completions');
    expect(seen[0]?.body).toMatchObject({ stream: true, stream_options: { include_usage: true } });
  });

  it('refuses to stream embeddings without calling the upstream', async () => {
    const { error } = await drain(backend.stream(request('embedding', { input: 'x' })));
    expect(error).toMatchObject({ status: 400, param: 'stream', failover: false });
    expect(seen).toEqual([]);
  });
});

describe('OpenAICompatibleBackend: chat responses', () => {
  it('keeps the OpenAI message fields and reasoning text, drops vendor extras and empty tool_calls', async () => {
    reply = () => ({
      json: {
        ...chatBody([
          {
            index: 0,
            message: {
              role: 'assistant',
              content: 'answer',
              refusal: null,
              reasoning_content: 'because',
              annotations: [{ type: 'url_citation', url_citation: { url: 'https://example.com' } }],
              tool_calls: [],
              vendor_thing: 1,
            },
            logprobs: { content: [{ token: 'a', logprob: -1, bytes: [97], top_logprobs: [] }] },
            finish_reason: 'stop',
            stop_reason: 42,
          },
        ]),
        system_fingerprint: 'fp_x',
      },
    });
    const res = await backend.complete(request('chat', { messages }));
    expect(res.output).toEqual([
      {
        index: 0,
        message: {
          role: 'assistant',
          content: 'answer',
          refusal: null,
          reasoning_content: 'because',
          annotations: [{ type: 'url_citation', url_citation: { url: 'https://example.com' } }],
        },
        logprobs: { content: [{ token: 'a', logprob: -1, bytes: [97], top_logprobs: [] }] },
        finish_reason: 'stop',
      },
    ]);
    expect(res.usage).toEqual(USAGE);
    expect(res.system_fingerprint).toBe('fp_x');
  });

  it('passes tool calls through and maps finish reasons', async () => {
    const call = { id: 'call_1', type: 'function', function: { name: 'f', arguments: '{"a":1}' } };
    reply = () => ({
      json: chatBody([
        { index: 0, message: { role: 'assistant', content: null, tool_calls: [call] }, finish_reason: 'tool_calls' },
        { index: 1, message: { content: 'x' }, finish_reason: 'eos' },
        { index: 2, message: { content: 'y' }, finish_reason: 'content_filter' },
        { index: 3, message: { content: 'z' } },
      ]),
    });
    const out = (await backend.complete(request('chat', { messages, n: 4 }))).output as ChatChoice[];
    expect(out[0]?.message).toEqual({ role: 'assistant', content: null, tool_calls: [call] });
    expect(out.map((c) => c.finish_reason)).toEqual(['tool_calls', 'stop', 'content_filter', 'stop']);
    expect(out[1]?.message).toEqual({ role: 'assistant', content: 'x' });
  });

  it.each([
    ['a tool call without id', { role: 'assistant', tool_calls: [{ type: 'function', function: { name: 'f' } }] }],
    ['content that is not a string', { role: 'assistant', content: [{ type: 'text', text: 'x' }] }],
    ['arguments that are not a string', { tool_calls: [{ id: 'i', function: { name: 'f', arguments: {} } }] }],
  ])('rejects %s as an invalid upstream response', async (_name, message) => {
    reply = () => ({ json: chatBody([{ index: 0, message, finish_reason: 'stop' }]) });
    const error: unknown = await backend.complete(request('chat', { messages })).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(BackendError);
    expect(error).toMatchObject({ status: 502, failover: true, message: /invalid response/ });
  });

  it("maps vLLM's finish_reason abort to an upstream failure", async () => {
    reply = () => ({ json: chatBody([{ index: 0, message: { content: 'x' }, finish_reason: 'abort' }]) });
    const error: unknown = await backend.complete(request('chat', { messages })).catch((e: unknown) => e);
    expect(error).toMatchObject({ status: 502, failover: true, message: /abort/ });
  });
});

describe('OpenAICompatibleBackend: chat streams', () => {
  it('adds role to the first delta of each choice and to no other', async () => {
    reply = () => ({
      sse: [
        frame([{ index: 0, delta: { content: 'a' }, finish_reason: null }]),
        frame([{ index: 1, delta: { role: 'assistant', content: 'b' }, finish_reason: null }]),
        frame([{ index: 0, delta: { role: 'assistant', content: 'c' }, finish_reason: null }]),
        frame([{ index: 1, finish_reason: 'length' }]),
        frame([{ index: 0, delta: {}, finish_reason: 'stop' }]),
        frame([], { usage: USAGE }),
      ],
    });
    const { events, error } = await drain(backend.stream(request('chat', { messages, n: 2 })));
    expect(error).toBeUndefined();
    expect(chatChunks(events)).toEqual([
      { index: 0, delta: { role: 'assistant', content: 'a' }, logprobs: null, finish_reason: null },
      { index: 1, delta: { role: 'assistant', content: 'b' }, logprobs: null, finish_reason: null },
      { index: 0, delta: { content: 'c' }, logprobs: null, finish_reason: null },
      { index: 1, delta: {}, logprobs: null, finish_reason: 'length' },
      { index: 0, delta: {}, logprobs: null, finish_reason: 'stop' },
    ]);
    expect(Object.keys(chatChunks(events)[0]?.delta ?? {})[0]).toBe('role');
    expect(events.at(-1)).toEqual({ type: 'usage', usage: USAGE });
  });

  it('passes tool-call deltas through in order, with vendor fields dropped', async () => {
    const head = { index: 0, id: 'call_9', type: 'function', function: { name: 'get', arguments: '' } };
    reply = () => ({
      sse: [
        frame([{ index: 0, delta: { role: 'assistant', content: null, tool_calls: [head] }, finish_reason: null }]),
        frame([{ index: 0, delta: { tool_calls: [{ index: 0, function: { arguments: '{"q":' } }] } }]),
        frame([{ index: 0, delta: { tool_calls: [{ index: 0, function: { arguments: '"x"}' }, extra: 1 }] } }]),
        frame([
          { index: 0, delta: { tool_calls: [{ index: 1, id: 'call_10', type: 'function', function: { name: 'h' } }] } },
        ]),
        frame([{ index: 0, delta: { reasoning: 'hmm', vendor: 'v' }, finish_reason: 'tool_calls' }]),
      ],
    });
    const { events, error } = await drain(backend.stream(request('chat', { messages })));
    expect(error).toBeUndefined();
    expect(chatChunks(events).map((c) => c.delta)).toEqual([
      { role: 'assistant', content: null, tool_calls: [head] },
      { tool_calls: [{ index: 0, function: { arguments: '{"q":' } }] },
      { tool_calls: [{ index: 0, function: { arguments: '"x"}' } }] },
      { tool_calls: [{ index: 1, id: 'call_10', type: 'function', function: { name: 'h' } }] },
      { reasoning: 'hmm' },
    ]);
    expect(chatChunks(events).at(-1)?.finish_reason).toBe('tool_calls');
  });

  it('maps finish reasons: OpenAI ones pass, other strings are stop, abort fails', async () => {
    const reasons = ['function_call', 'content_filter', 'end_turn', null];
    reply = () => ({ sse: reasons.map((f, index) => frame([{ index, delta: { content: 'x' }, finish_reason: f }])) });
    const { events } = await drain(backend.stream(request('chat', { messages, n: 4 })));
    expect(chatChunks(events).map((c) => c.finish_reason)).toEqual(['function_call', 'content_filter', 'stop', null]);

    reply = () => ({ sse: [frame([{ index: 0, delta: { content: 'x' }, finish_reason: 'error' }])] });
    const { error } = await drain(backend.stream(request('chat', { messages })));
    expect(error).toMatchObject({ status: 502, failover: true, message: /finish_reason "error"/ });
  });

  it('turns a JSON answer to a stream request into role+content+tool_calls, then finish, then usage', async () => {
    const call = { id: 'call_1', type: 'function', function: { name: 'f', arguments: '{}' } };
    reply = () => ({
      json: {
        ...chatBody([
          { index: 0, message: { role: 'assistant', content: 'hello' }, finish_reason: 'stop' },
          { index: 1, message: { role: 'assistant', content: null, tool_calls: [call] }, finish_reason: 'tool_calls' },
        ]),
        system_fingerprint: 'fp_j',
      },
    });
    const { events, error } = await drain(backend.stream(request('chat', { messages, n: 2 })));
    expect(error).toBeUndefined();
    expect(events).toEqual([
      {
        type: 'chunk',
        system_fingerprint: 'fp_j',
        choices: [
          { index: 0, delta: { role: 'assistant', content: 'hello' }, logprobs: null, finish_reason: null },
          {
            index: 1,
            delta: { role: 'assistant', content: null, tool_calls: [{ index: 0, ...call }] },
            logprobs: null,
            finish_reason: null,
          },
        ],
      },
      {
        type: 'chunk',
        system_fingerprint: 'fp_j',
        choices: [
          { index: 0, delta: {}, logprobs: null, finish_reason: 'stop' },
          { index: 1, delta: {}, logprobs: null, finish_reason: 'tool_calls' },
        ],
      },
      { type: 'usage', usage: USAGE },
    ]);
  });

  it('fails on an in-band error frame, an `event: error` and a malformed delta', async () => {
    reply = () => ({ sse: [{ error: { message: 'bad tools', type: 'BadRequestError', code: 400 } }] });
    const inBand = await drain(backend.stream(request('chat', { messages })));
    expect(inBand.error).toMatchObject({ status: 400, type: 'invalid_request_error', message: 'bad tools' });

    reply = () => ({ sse: ['event: error\ndata: {"error":{"message":"engine died","code":500}}\n\n'] });
    const named = await drain(backend.stream(request('chat', { messages })));
    expect(named.error).toMatchObject({ status: 502, failover: true });

    reply = () => ({ sse: [frame([{ index: 0, delta: { tool_calls: [{ index: 0, type: 'web' }] } }])] });
    const malformed = await drain(backend.stream(request('chat', { messages })));
    expect(malformed.error).toMatchObject({ status: 502, message: /protocol error/ });
  });

  it('an upstream 500 on chat maps as for completions', async () => {
    reply = () => ({ status: 500, json: { error: { message: 'x', type: 'server_error' } } });
    const { error } = await drain(backend.stream(request('chat', { messages })));
    expect(error).toMatchObject({ status: 502, failover: true, message: /status 500/ });
  });
});

describe('OpenAICompatibleBackend: embeddings', () => {
  it('passes float vectors and base64 strings through untouched; usage gets completion_tokens 0', async () => {
    const data = [
      { object: 'embedding', index: 0, embedding: [0.25, -0.5, 1e-7] },
      { object: 'embedding', index: 1, embedding: 'AACAPgAAAL8=' },
    ];
    reply = () => ({ json: { object: 'list', data, model: 'up-model', usage: { prompt_tokens: 4, total_tokens: 4 } } });
    const res = await backend.complete(request('embedding', { input: ['a b', 'c d'] }));
    expect(res.output as EmbeddingObject[]).toEqual(data);
    expect(res.usage).toEqual({ prompt_tokens: 4, completion_tokens: 0, total_tokens: 4 });
  });

  it.each([
    ['no data array', { object: 'list' }],
    ['a vector with a non-number', { data: [{ index: 0, embedding: [1, 'x'] }] }],
    ['an item without index', { data: [{ embedding: [1] }] }],
  ])('rejects %s', async (_name, json) => {
    reply = () => ({ json });
    const error: unknown = await backend.complete(request('embedding', { input: 'x' })).catch((e: unknown) => e);
    expect(error).toMatchObject({ status: 502, failover: true, message: /invalid response/ });
  });

  it('maps an upstream 400 to the client and an error body on a 200 too', async () => {
    reply = () => ({ status: 400, json: { error: { message: 'too many inputs', type: 'invalid_request_error' } } });
    const e400: unknown = await backend.complete(request('embedding', { input: 'x' })).catch((e: unknown) => e);
    expect(e400).toMatchObject({ status: 400, failover: false, message: 'too many inputs' });
    reply = () => ({ json: { error: { message: 'boom', code: 503 } } });
    const e200: unknown = await backend.complete(request('embedding', { input: 'x' })).catch((e: unknown) => e);
    expect(e200).toMatchObject({ status: 502, failover: true });
  });
});
