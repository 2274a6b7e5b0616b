import type OpenAI from 'openai';
import {
  APIError,
  BadRequestError,
  InternalServerError,
  NotFoundError,
  PermissionDeniedError,
  RateLimitError,
} from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type ChatCompletion,
  chatChunks,
  demuxChat,
  expectOpenAIError,
  fakeUpstreamText,
  parseSse,
  probe,
  raw,
  type RawResponse,
  rejection,
  sdk,
  simulatorEcho,
  userSays,
  withInfo,
} from '../support/contract-helpers';
import { type FakeUpstream, fakeEmbedding } from '../support/fake-upstream';
import { usageRecords } from '../support/redis-state';
import { simulatorDeployment, upstreamDeployment } from '../support/router-config';
import { freePort, type Stack } from '../support/stack';
import { startUpstreamStack } from '../support/upstream-stack';
import { waitUntil } from '../support/wait';

const ADMIN_KEY = 'admin-key-contract-chat-routing-0123';
const CHAT = '/v1/chat/completions';
const COMPLETIONS = '/v1/completions';
const EMBEDDINGS = '/v1/embeddings';

type ErrorClass = new (...args: never[]) => APIError;

/** A minimal valid body of each operation for `model`. */
function bodyFor(path: string, model: string, extra: Record<string, unknown> = {}): Record<string, unknown> {
  if (path.endsWith('/embeddings')) {
    return { model, input: 'route me', ...extra };
  }
  if (path.endsWith('/chat/completions')) {
    return { model, messages: userSays('route me'), ...extra };
  }
  return { model, prompt: 'route me', ...extra };
}

/**
 * Contract: chat completions and embeddings go through the same pipeline as completions:
 * `model_info.mode` decides which operations a model serves (404 model_not_supported naming
 * the endpoint to use otherwise), with the same allow-lists, unknown-model errors, rate
 * limits and `x-ratelimit-*` headers (one budget for all operations), `max_parallel_requests`,
 * usage records naming the route, upstream error mapping before the first token, in-band
 * errors after it (one `data: {"error"}` then `[DONE]`) and failover between deployments.
 */
describe('contract: chat and embeddings through the pipeline', () => {
  let upstream: FakeUpstream;
  let stack: Stack;
  let key: string;
  let client: OpenAI;

  beforeAll(async () => {
    const env = { AQUEDUCT_ADMIN_KEY: ADMIN_KEY, AQUEDUCT_IDLE_TIMEOUT_MS: '2000' };
    ({ upstream, stack, key } = await startUpstreamStack('contract-chat-routing', { env }, async (url) => {
      const closed = `http://127.0.0.1:${await freePort()}/v1`;
      const embedding = { mode: 'embedding' as const };
      return [
        simulatorDeployment('echo', 'echo'),
        simulatorDeployment('chatty', 'echo', {}, { mode: 'chat' }),
        simulatorDeployment('compl', 'echo', {}, { mode: 'completion' }),
        simulatorDeployment('embed', 'echo', {}, embedding),
        simulatorDeployment('slow', 'lorem', { itl_ms: 60 }),
        upstreamDeployment('up', url),
        upstreamDeployment('up-timeout', url, { timeout: 1 }),
        withInfo(upstreamDeployment('up-embed', url), embedding),
        upstreamDeployment('failover', closed),
        upstreamDeployment('failover', url),
        withInfo(upstreamDeployment('failover-embed', closed), embedding),
        withInfo(upstreamDeployment('failover-embed', url), embedding),
      ];
    }));
    client = sdk(stack, key);
  });

  afterAll(async () => {
    await stack?.stop();
    await upstream?.close();
  });

  describe('which model serves which operation (model_info.mode)', () => {
    const refused = [
      { model: 'embed', path: CHAT, use: /\/v1\/embeddings/ },
      { model: 'embed', path: '/chat/completions', use: /\/v1\/embeddings/ },
      { model: 'embed', path: COMPLETIONS, use: /\/v1\/embeddings/ },
      { model: 'up-embed', path: CHAT, use: /\/v1\/embeddings/ },
      { model: 'chatty', path: COMPLETIONS, use: /\/v1\/chat\/completions/ },
      { model: 'chatty', path: EMBEDDINGS, use: /\/v1\/chat\/completions/ },
      { model: 'chatty', path: '/embeddings', use: /\/v1\/chat\/completions/ },
      { model: 'compl', path: CHAT, use: /\/v1\/completions/ },
      { model: 'compl', path: EMBEDDINGS, use: /\/v1\/completions/ },
      { model: 'echo', path: EMBEDDINGS, use: /\/v1\/(chat\/)?completions/ },
      { model: 'up', path: EMBEDDINGS, use: /\/v1\/(chat\/)?completions/ },
    ];

    it.each(refused)(
      '$model on $path → 404 model_not_supported naming the endpoint to use',
      async ({ model, path, use }) => {
        const mark = probe();
        const res = await raw(stack, bodyFor(path, model, mark), { key, path });
        expectOpenAIError(res, 404, { type: 'invalid_request_error', code: 'model_not_supported', message: use });
        if (!path.endsWith('embeddings')) {
          // A stream request is refused the same way, as plain JSON before any event.
          const streamed = await raw(stack, bodyFor(path, model, { stream: true }), { key, path });
          expectOpenAIError(streamed, 404, { code: 'model_not_supported', message: use });
        }
        await new Promise((r) => setTimeout(r, 100));
        expect(upstream.requests.some((r) => r.body.probe === mark.probe)).toBe(false);
      },
    );

    it.each([
      { model: 'echo', path: COMPLETIONS },
      { model: 'echo', path: CHAT },
      { model: 'up', path: COMPLETIONS },
      { model: 'up', path: CHAT },
      { model: 'chatty', path: CHAT },
      { model: 'compl', path: COMPLETIONS },
      { model: 'embed', path: EMBEDDINGS },
      { model: 'up-embed', path: EMBEDDINGS },
    ])('$model serves $path', async ({ model, path }) => {
      const res = await raw(stack, bodyFor(path, model), { key, path });
      expect(res.status, res.text).toBe(200);
      const json = res.json as { object: string };
      expect(json.object).toBe(path === CHAT ? 'chat.completion' : path === EMBEDDINGS ? 'list' : 'text_completion');
    });

    it('a model without mode answers chat with the same echo it gives as a completion', async () => {
      const chat = (await raw(stack, bodyFor(CHAT, 'echo'), { key, path: CHAT })).json as ChatCompletion;
      const completion = (await raw(stack, bodyFor(COMPLETIONS, 'echo'), { key, path: COMPLETIONS })).json as {
        choices: { text: string }[];
      };
      expect(chat.choices[0]?.message.content).toBe(simulatorEcho('route me'));
      expect(completion.choices[0]?.text).toBe(simulatorEcho('route me'));
    });

    it('the SDK raises NotFoundError with code model_not_supported', async () => {
      const errors = [
        await rejection(client.chat.completions.create({ model: 'embed', messages: userSays('x') })),
        await rejection(client.chat.completions.create({ model: 'embed', messages: userSays('x'), stream: true })),
        await rejection(client.embeddings.create({ model: 'chatty', input: 'x' })),
        await rejection(client.completions.create({ model: 'embed', prompt: 'x' })),
      ];
      for (const err of errors) {
        expect(err).toBeInstanceOf(NotFoundError);
        expect(err.code).toBe('model_not_supported');
      }
    });

    it('every model is listed, whatever its mode', async () => {
      const ids = (await client.models.list()).data.map((m) => m.id);
      expect(ids).toEqual(expect.arrayContaining(['echo', 'chatty', 'compl', 'embed', 'up-embed']));
    });
  });

  describe('auth, allow-lists and unknown models', () => {
    it('401 without a key, and a body access_token is not a credential', async () => {
      for (const path of [CHAT, EMBEDDINGS]) {
        expectOpenAIError(await raw(stack, bodyFor(path, 'echo')), 401, { type: 'invalid_request_error', code: null });
        const smuggled = await raw(stack, bodyFor(path, path === CHAT ? 'echo' : 'embed', { access_token: key }), {
          path,
        });
        expectOpenAIError(smuggled, 401, { type: 'invalid_request_error' });
      }
    });

    it('403 model_not_allowed outside the allow-list, for chat (streamed or not) and embeddings', async () => {
      const limited = await stack.createKey({ models: ['echo', 'embed'] });
      const limitedClient = sdk(stack, limited);
      expectOpenAIError(await raw(stack, bodyFor(CHAT, 'up'), { key: limited, path: CHAT }), 403, {
        param: 'model',
        code: 'model_not_allowed',
        message: /up/,
      });
      expectOpenAIError(await raw(stack, bodyFor(EMBEDDINGS, 'up-embed'), { key: limited, path: EMBEDDINGS }), 403, {
        param: 'model',
        code: 'model_not_allowed',
      });
      for (const stream of [false, true]) {
        const err = await rejection(
          limitedClient.chat.completions.create({ model: 'up', messages: userSays('x'), stream }),
        );
        expect(err).toBeInstanceOf(PermissionDeniedError);
      }
      expect(await rejection(limitedClient.embeddings.create({ model: 'up-embed', input: 'x' }))).toBeInstanceOf(
        PermissionDeniedError,
      );
      // What the list allows still works.
      expect((await limitedClient.chat.completions.create({ model: 'echo', messages: userSays('ok') })).object).toBe(
        'chat.completion',
      );
      expect((await limitedClient.embeddings.create({ model: 'embed', input: 'ok' })).data).toHaveLength(1);
    });

    it('404 model_not_found for an unknown model, chat (streamed or not) and embeddings', async () => {
      for (const [path, extra] of [
        [CHAT, {}],
        [CHAT, { stream: true }],
        [EMBEDDINGS, {}],
      ] as const) {
        const res = await raw(stack, bodyFor(path, 'no-such-model', extra), { key, path });
        expectOpenAIError(res, 404, { param: 'model', code: 'model_not_found', message: /no-such-model/ });
      }
      const err = await rejection(client.embeddings.create({ model: 'no-such-model', input: 'x' }));
      expect(err).toBeInstanceOf(NotFoundError);
      expect(err.code).toBe('model_not_found');
    });
  });

  describe('rate limits and concurrency', () => {
    const statuses = (all: RawResponse[]) => all.map((r) => r.status).sort();

    it('requests_per_minute on chat: 429 with Retry-After and x-ratelimit-*; successes carry the headers', async () => {
      const limited = await stack.createKey({ requests_per_minute: 2 });
      const all = await Promise.all(
        [1, 2, 3].map(() => raw(stack, bodyFor(CHAT, 'echo'), { key: limited, path: CHAT })),
      );
      expect(statuses(all)).toEqual([200, 200, 429]);
      const ok = all.find((r) => r.status === 200);
      expect(ok?.headers.get('x-ratelimit-limit-requests')).toBe('2');
      expect(ok?.headers.get('x-ratelimit-remaining-requests')).toMatch(/^[01]$/);
      const refusedRes = all.find((r) => r.status === 429) as RawResponse;
      expectOpenAIError(refusedRes, 429, { type: 'requests', code: 'rate_limit_exceeded' });
      expect(Number(refusedRes.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
      expect(refusedRes.headers.get('x-ratelimit-limit-requests')).toBe('2');
      expect(refusedRes.headers.get('x-ratelimit-remaining-requests')).toBe('0');
      expect(refusedRes.headers.get('x-ratelimit-reset-requests')).toMatch(/^\d+(ms|s|m\d+s)$/);
      const err = await rejection(
        sdk(stack, limited).chat.completions.create({ model: 'echo', messages: userSays('x') }),
      );
      expect(err).toBeInstanceOf(RateLimitError);
    });

    it('one request budget for all operations: completion, chat and embeddings draw on it alike', async () => {
      const limited = await stack.createKey({ requests_per_minute: 3 });
      for (const [path, model] of [
        [COMPLETIONS, 'echo'],
        [CHAT, 'echo'],
        [EMBEDDINGS, 'embed'],
      ] as const) {
        const res = await raw(stack, bodyFor(path, model), { key: limited, path });
        expect(res.status, `${path}: ${res.text}`).toBe(200);
        expect(res.headers.get('x-ratelimit-limit-requests')).toBe('3');
      }
      for (const [path, model] of [
        [CHAT, 'echo'],
        [EMBEDDINGS, 'embed'],
        [COMPLETIONS, 'echo'],
      ] as const) {
        const res = await raw(stack, bodyFor(path, model), { key: limited, path });
        expectOpenAIError(res, 429, { code: 'rate_limit_exceeded' });
      }
    });

    it('output_tokens_per_minute counts chat completion tokens', async () => {
      const limited = await stack.createKey({ output_tokens_per_minute: 10 });
      const twelve = Array.from({ length: 12 }, (_, i) => `w${i}`).join(' ');
      const first = await raw(stack, { model: 'echo', messages: userSays(twelve) }, { key: limited, path: CHAT });
      expect(first.status, first.text).toBe(200);
      await new Promise((r) => setTimeout(r, 300)); // the worker accounts usage as the job ends
      const second = await raw(stack, bodyFor(CHAT, 'echo'), { key: limited, path: CHAT });
      expectOpenAIError(second, 429, { type: 'tokens' });
    });

    it('input_tokens_per_minute counts embedding input tokens', async () => {
      const limited = await stack.createKey({ input_tokens_per_minute: 10 });
      const input = Array.from({ length: 12 }, (_, i) => `w${i}`).join(' ');
      const first = await raw(stack, { model: 'up-embed', input }, { key: limited, path: EMBEDDINGS });
      expect(first.status, first.text).toBe(200);
      expect((first.json as { usage: { prompt_tokens: number } }).usage.prompt_tokens).toBe(12);
      await new Promise((r) => setTimeout(r, 300));
      const second = await raw(stack, { model: 'up-embed', input: 'x' }, { key: limited, path: EMBEDDINGS });
      expectOpenAIError(second, 429, { type: 'tokens' });
    });

    it('max_parallel_requests holds chat streams: the rest get 429 concurrency_limit_exceeded', async () => {
      const limited = await stack.createKey({ max_parallel_requests: 2 });
      const body = { model: 'slow', messages: userSays('x'), max_tokens: 12, stream: true };
      const all = await Promise.all(Array.from({ length: 5 }, () => raw(stack, body, { key: limited, path: CHAT })));
      expect(statuses(all)).toEqual([200, 200, 429, 429, 429]);
      for (const r of all.filter((x) => x.status === 429)) {
        expectOpenAIError(r, 429, { code: 'concurrency_limit_exceeded' });
        expect(Number(r.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
      }
      for (const r of all.filter((x) => x.status === 200)) {
        expect(parseSse(r.text).data.at(-1)).toBe('[DONE]');
      }
      // The slots come back when the streams end.
      const again = await Promise.all([1, 2].map(() => raw(stack, body, { key: limited, path: CHAT })));
      expect(statuses(again)).toEqual([200, 200]);
    });

    it('max_parallel_requests holds embeddings too', async () => {
      const limited = await stack.createKey({ max_parallel_requests: 1 });
      const body = { model: 'up-embed', input: 'wait', fake_ttft_ms: 800 };
      const all = await Promise.all([1, 2, 3].map(() => raw(stack, body, { key: limited, path: EMBEDDINGS })));
      expect(statuses(all)).toEqual([200, 429, 429]);
      expect(all.filter((r) => r.status === 429).every((r) => r.text.includes('concurrency_limit_exceeded'))).toBe(
        true,
      );
    });

    it('admitted chat and embeddings responses carry x-aqueduct-queue-ms', async () => {
      for (const [path, model, extra] of [
        [CHAT, 'echo', {}],
        [CHAT, 'echo', { stream: true }],
        [EMBEDDINGS, 'embed', {}],
      ] as const) {
        const res = await raw(stack, bodyFor(path, model, extra), { key, path });
        expect(res.status).toBe(200);
        expect(res.headers.get('x-aqueduct-queue-ms'), path).toMatch(/^\d+$/);
      }
    });
  });

  describe('usage records', () => {
    async function recordsOf(tokenId: string, count: number): Promise<Record<string, unknown>[]> {
      let records: Record<string, unknown>[] = [];
      await waitUntil(
        `${count} usage records of ${tokenId}`,
        async () => {
          records = (await usageRecords(stack)).filter((r) => r.token_id === tokenId);
          return records.length >= count;
        },
        10_000,
        100,
      );
      return records;
    }

    it('one record per chat and embeddings request, with its route, model, tokens and user', async () => {
      const { key: k, token } = await stack.tokens.create({ name: 'usage-ops' });
      const chat = await raw(
        stack,
        { model: 'echo', messages: userSays('count these words'), user: 'end-user-1', user_id: 'uid-chat' },
        { key: k, path: CHAT },
      );
      expect(chat.status, chat.text).toBe(200);
      const streamed = await raw(
        stack,
        { model: 'up', messages: userSays('stream these'), stream: true, stream_options: { include_usage: true } },
        { key: k, path: '/chat/completions' },
      );
      expect(streamed.status, streamed.text).toBe(200);
      const embedded = await raw(stack, { model: 'embed', input: ['a b', 'c'] }, { key: k, path: EMBEDDINGS });
      expect(embedded.status, embedded.text).toBe(200);

      const records = await recordsOf(token.id, 3);
      await new Promise((r) => setTimeout(r, 300));
      expect((await usageRecords(stack)).filter((r) => r.token_id === token.id)).toHaveLength(3);

      const chatUsage = (chat.json as ChatCompletion).usage;
      const chatRecord = records.find((r) => r.route === CHAT);
      expect(chatRecord).toMatchObject({
        model: 'echo',
        status: 200,
        outcome: 'ok',
        user: 'end-user-1',
        user_id: 'uid-chat',
        prompt_tokens: chatUsage.prompt_tokens,
        completion_tokens: chatUsage.completion_tokens,
      });
      const streamUsage = parseSse(streamed.text).usageChunks[0]?.usage;
      const streamRecord = records.find((r) => r.route === '/chat/completions');
      expect(streamRecord).toMatchObject({
        model: 'up',
        status: 200,
        outcome: 'ok',
        prompt_tokens: streamUsage?.prompt_tokens,
        completion_tokens: streamUsage?.completion_tokens,
      });
      expect(streamRecord?.ttft_ms as number).toBeGreaterThanOrEqual(0);
      const embedUsage = (embedded.json as { usage: { prompt_tokens: number } }).usage;
      const embedRecord = records.find((r) => r.route === EMBEDDINGS);
      expect(embedRecord).toMatchObject({
        model: 'embed',
        status: 200,
        outcome: 'ok',
        prompt_tokens: embedUsage.prompt_tokens,
        completion_tokens: 0,
      });
      // Where records name their operation, it is the right one.
      for (const [record, op] of [
        [chatRecord, 'chat'],
        [streamRecord, 'chat'],
        [embedRecord, 'embedding'],
      ] as const) {
        for (const field of ['op', 'operation']) {
          if (record !== undefined && field in record) {
            expect(record[field]).toBe(op);
          }
        }
      }

      const summary = (await (
        await fetch(`${stack.baseUrl}/admin/usage?token=${token.id}&since=1h`, {
          headers: { authorization: `Bearer ${ADMIN_KEY}` },
        })
      ).json()) as {
        requests: number;
        prompt_tokens: number;
        completion_tokens: number;
        by_model: { model: string }[];
      };
      expect(summary.requests).toBe(3);
      expect(summary.completion_tokens).toBe(chatUsage.completion_tokens + (streamUsage?.completion_tokens ?? NaN));
      expect(summary.prompt_tokens).toBe(
        chatUsage.prompt_tokens + (streamUsage?.prompt_tokens ?? NaN) + embedUsage.prompt_tokens,
      );
      expect(summary.by_model.map((m) => m.model).sort()).toEqual(['echo', 'embed', 'up']);
    });

    it('requests refused before admission (model_not_supported, 400) leave no record', async () => {
      const { key: k, token } = await stack.tokens.create({ name: 'usage-refused' });
      expect((await raw(stack, bodyFor(CHAT, 'embed'), { key: k, path: CHAT })).status).toBe(404);
      expect((await raw(stack, bodyFor(EMBEDDINGS, 'echo'), { key: k, path: EMBEDDINGS })).status).toBe(404);
      expect((await raw(stack, { model: 'echo', messages: [] }, { key: k, path: CHAT })).status).toBe(400);
      expect((await raw(stack, { model: 'embed', input: [] }, { key: k, path: EMBEDDINGS })).status).toBe(400);
      // A request that is admitted afterwards is the only record.
      expect((await raw(stack, bodyFor(CHAT, 'echo'), { key: k, path: CHAT })).status).toBe(200);
      const records = await recordsOf(token.id, 1);
      await new Promise((r) => setTimeout(r, 300));
      expect((await usageRecords(stack)).filter((r) => r.token_id === token.id)).toHaveLength(1);
      expect(records[0]).toMatchObject({ route: CHAT, status: 200 });
    });
  });

  describe('upstream failures before the first token (chat)', () => {
    const BAD_GATEWAY = [500, 502];
    const rows: {
      name: string;
      model?: string;
      knobs: Record<string, unknown>;
      status: number[];
      cls: ErrorClass;
      type?: string;
      param?: string;
      code?: string;
      message: RegExp;
      streamOnly?: boolean;
    }[] = [
      {
        name: 'upstream 400 keeps its message',
        knobs: { fake_fail: 'status:400', fake_error_message: 'messages contain a forbidden token' },
        status: [400],
        cls: BadRequestError,
        type: 'invalid_request_error',
        message: /messages contain a forbidden token/,
      },
      {
        name: 'context_length_exceeded names messages',
        knobs: { fake_fail: 'context-length' },
        status: [400],
        cls: BadRequestError,
        param: 'messages',
        code: 'context_length_exceeded',
        message: /maximum context length/,
      },
      {
        name: 'upstream 429',
        knobs: { fake_fail: 'status:429' },
        status: [429],
        cls: RateLimitError,
        message: /rate limit/i,
      },
      {
        name: 'upstream 500',
        knobs: { fake_fail: 'status:500' },
        status: BAD_GATEWAY,
        cls: InternalServerError,
        type: 'server_error',
        message: /upstream/,
      },
      {
        name: 'garbage',
        knobs: { fake_fail: 'garbage' },
        status: BAD_GATEWAY,
        cls: InternalServerError,
        type: 'server_error',
        message: /upstream/,
      },
      {
        name: 'no choices',
        knobs: { fake_fail: 'no-choices' },
        status: BAD_GATEWAY,
        cls: InternalServerError,
        type: 'server_error',
        message: /upstream/,
      },
      {
        name: 'finish_reason abort',
        knobs: { fake_fail: 'finish-abort' },
        status: BAD_GATEWAY,
        cls: InternalServerError,
        type: 'server_error',
        message: /upstream/,
      },
      {
        name: 'reset before the first token',
        knobs: { fake_fail: 'reset-after:0' },
        status: BAD_GATEWAY,
        cls: InternalServerError,
        type: 'server_error',
        message: /upstream/,
      },
      {
        name: 'EOF before the first token',
        knobs: { fake_fail: 'eof-after:0' },
        status: BAD_GATEWAY,
        cls: InternalServerError,
        type: 'server_error',
        message: /upstream/,
      },
      {
        name: 'oversize frame',
        knobs: { fake_fail: 'oversize' },
        status: BAD_GATEWAY,
        cls: InternalServerError,
        type: 'server_error',
        message: /upstream/,
        streamOnly: true,
      },
      {
        name: 'in-band error frame',
        knobs: { fake_fail: 'error-frame' },
        status: [400],
        cls: BadRequestError,
        message: /boom/,
      },
      {
        name: 'no answer within the deployment timeout',
        model: 'up-timeout',
        knobs: { fake_fail: 'hang' },
        status: [504],
        cls: InternalServerError,
        type: 'server_error',
        message: /time/,
      },
    ];
    const cases = rows.flatMap((r) =>
      (r.streamOnly ? [true] : [false, true]).map((stream) => ({
        ...r,
        stream,
        mode: stream ? 'stream' : 'non-stream',
      })),
    );

    it.each(cases)('$name ($mode) → $status', async (row) => {
      const body = { model: row.model ?? 'up', messages: userSays('a b c'), stream: row.stream, ...row.knobs };
      const res = await raw(stack, body, { key, path: CHAT });
      expect(row.status, res.text.slice(0, 300)).toContain(res.status);
      // Late commit: a stream that fails before its first token is a plain JSON error, not SSE.
      expectOpenAIError(res, res.status, { type: row.type, param: row.param, code: row.code, message: row.message });
      if (res.status === 429) {
        expect(res.headers.get('retry-after')).toBe('1');
      }
      const err = await rejection(
        (async () => {
          const out = await client.chat.completions.create(body as unknown as OpenAI.ChatCompletionCreateParams);
          if (row.stream) {
            for await (const _ of out as AsyncIterable<unknown>) {
              // A failure before the first token must surface as the status, not mid-iteration.
            }
          }
          return out;
        })(),
      );
      expect(err).toBeInstanceOf(row.cls);
      expect(row.status).toContain(err.status);
    });
  });

  describe('after the first token (chat stream)', () => {
    it.each([
      { name: 'connection reset', fail: 'reset-after:2', message: /terminated/ },
      { name: 'EOF without [DONE]', fail: 'eof-after:2', message: /terminated/ },
      { name: 'stall', fail: 'stall-after:2', message: /stalled/ },
    ])('$name: exactly one data:{"error"} event, then data: [DONE]', async ({ fail, message }) => {
      const prompt = 'one two three four five';
      const body = { model: 'up', messages: userSays(prompt), stream: true, fake_fail: fail, fake_itl_ms: 50 };
      const res = await raw(stack, body, { key, path: CHAT });
      expect(res.status).toBe(200);
      expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/);
      const sse = parseSse(res.text);
      expect(sse.data.at(-1)).toBe('[DONE]');
      expect(sse.data.filter((d) => d === '[DONE]')).toHaveLength(1);
      expect(sse.errors).toHaveLength(1);
      expect(sse.data.at(-2)).toBe(JSON.stringify(sse.errors[0]));
      const error = sse.errors[0]?.error;
      expect(Object.keys(error ?? {}).sort()).toEqual(['code', 'message', 'param', 'type']);
      expect(error?.type).toBe('server_error');
      expect(error?.message).toMatch(message);
      const m = demuxChat(chatChunks(sse)).get(0);
      expect(m?.roleFirst).toBe(true);
      expect(m?.content.length).toBeGreaterThan(0);
      expect(fakeUpstreamText(prompt).startsWith(m?.content ?? 'x')).toBe(true);
      expect(m?.content).not.toBe(fakeUpstreamText(prompt));
      expect(m?.finishes).toBe(0);
    });

    it('a tool-call stream cut mid-arguments ends with one error event and [DONE]', async () => {
      const body = {
        model: 'up',
        messages: userSays('a b c d e f g h'),
        tools: [{ type: 'function', function: { name: 'f' } }],
        tool_choice: { type: 'function', function: { name: 'f' } },
        stream: true,
        fake_fail: 'reset-after:3',
        fake_itl_ms: 50,
      };
      const res = await raw(stack, body, { key, path: CHAT });
      expect(res.status).toBe(200);
      const sse = parseSse(res.text);
      expect(sse.errors).toHaveLength(1);
      expect(sse.data.at(-1)).toBe('[DONE]');
      const call = demuxChat(chatChunks(sse)).get(0)?.toolCalls.get(0);
      expect(call?.name).toBe('f');
      expect(call?.arguments.length).toBeGreaterThan(0);
    });

    it('the SDK raises an APIError while iterating, after the first content', async () => {
      const stream = await client.chat.completions.create({
        model: 'up',
        messages: userSays('one two three four five'),
        stream: true,
        ...({ fake_fail: 'reset-after:2', fake_itl_ms: 50 } as Record<string, unknown>),
      });
      let text = '';
      const err = await rejection(
        (async () => {
          for await (const chunk of stream) {
            text += chunk.choices.map((c) => c.delta.content ?? '').join('');
          }
        })(),
      );
      expect(text).toBe(' echo: one');
      expect(err.status).toBeUndefined();
      expect(err.message).toMatch(/terminated/);
    });

    it('a deployment timeout that expires mid-stream is reported in-band', async () => {
      const body = { model: 'up-timeout', messages: userSays('a b c d e f g h'), stream: true, fake_itl_ms: 300 };
      const res = await raw(stack, body, { key, path: CHAT });
      expect(res.status).toBe(200);
      const sse = parseSse(res.text);
      expect(sse.chunks.length).toBeGreaterThan(0);
      expect(sse.errors).toHaveLength(1);
      expect(sse.errors[0]?.error).toMatchObject({ type: 'server_error', code: 'timeout' });
      expect(sse.data.at(-1)).toBe('[DONE]');
    });
  });

  describe('failover', () => {
    it('chat fails over from a refused deployment to a working one before the first token', async () => {
      for (const stream of [false, true, false, true]) {
        const res = await raw(
          stack,
          { model: 'failover', messages: userSays('still here'), stream },
          { key, path: CHAT },
        );
        expect(res.status, res.text).toBe(200);
        const content = stream
          ? demuxChat(chatChunks(parseSse(res.text))).get(0)?.content
          : (res.json as ChatCompletion).choices[0]?.message.content;
        expect(content).toBe(fakeUpstreamText('still here'));
      }
    });

    it('embeddings fail over the same way', async () => {
      for (let i = 0; i < 4; i++) {
        const res = await raw(stack, { model: 'failover-embed', input: 'still here' }, { key, path: EMBEDDINGS });
        expect(res.status, res.text).toBe(200);
        expect((res.json as { data: { embedding: number[] }[] }).data[0]?.embedding).toEqual(
          fakeEmbedding('still here'),
        );
      }
    });
  });

  // Runs last: it stops the stack's only worker.
  describe('without a live worker', () => {
    it('503 with Retry-After for chat (streamed or not) and embeddings', async () => {
      await stack.workers[0]?.stop();
      await waitUntil(
        '/ready to answer 503',
        async () => (await raw(stack, undefined, { method: 'GET', path: '/ready' })).status === 503,
        10_000,
        100,
      );
      for (const [path, model, extra] of [
        [CHAT, 'echo', {}],
        [CHAT, 'echo', { stream: true }],
        [EMBEDDINGS, 'embed', {}],
      ] as const) {
        const res = await raw(stack, bodyFor(path, model, extra), { key, path });
        expectOpenAIError(res, 503, { type: 'server_error', message: /worker/ });
        expect(Number(res.headers.get('retry-after'))).toBeGreaterThan(0);
      }
    });
  });
});
