import type OpenAI from 'openai';
import { BadRequestError, InternalServerError, UnprocessableEntityError } from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  demux,
  expectOpenAIError,
  fakeUpstreamText,
  parseSse,
  probe,
  raw,
  rejection,
  sdk,
} from '../support/contract-helpers';
import type { FakeUpstream } from '../support/fake-upstream';
import { upstreamDeployment } from '../support/router-config';
import { freePort, type Stack } from '../support/stack';
import { startUpstreamStack } from '../support/upstream-stack';
import {
  AFTER_FIRST_TOKEN_FAILURES,
  BAD_GATEWAY,
  failureCases,
  SHARED_UPSTREAM_FAILURES,
  type UpstreamFailureRow,
} from '../support/upstream-failures';

const UPSTREAM_KEY = 'upstream-secret-4f9a2b71c0';

/**
 * Contract: every way an upstream can fail reaches the client as the right status and
 * OpenAI error object (and SDK error class), streamed or not, never leaking the upstream
 * key; a stream holds its status until the first token (late commit), and after it
 * reports a failure as one `data: {"error": …}` event followed by `data: [DONE]`.
 */
describe('contract: upstream failures and late commit', () => {
  let upstream: FakeUpstream;
  let stack: Stack;
  let key: string;
  let client: OpenAI;

  beforeAll(async () => {
    const env = { CONTRACT_UPSTREAM_KEY: UPSTREAM_KEY, AQUEDUCT_IDLE_TIMEOUT_MS: '2000' };
    ({ upstream, stack, key } = await startUpstreamStack('contract-upstream', { env }, async (url) => {
      // Ports nobody listens on: connections to them are refused.
      const [closedA, closedB] = [await freePort(), await freePort()];
      const keyed = { api_key: 'os.environ/CONTRACT_UPSTREAM_KEY' };
      return [
        upstreamDeployment('up', url, keyed),
        upstreamDeployment('up-unauthorized', url, { model: 'openai/unauthorized', ...keyed }),
        upstreamDeployment('up-missing', url, { model: 'openai/missing-model', ...keyed }),
        upstreamDeployment('slow', url, { ...keyed, timeout: 1 }),
        upstreamDeployment('refused', `http://127.0.0.1:${closedA}/v1`, keyed),
        upstreamDeployment('refused', `http://127.0.0.1:${closedB}/v1`, keyed),
        upstreamDeployment('failover', `http://127.0.0.1:${closedA}/v1`),
        upstreamDeployment('failover', url, keyed),
      ];
    }));
    client = sdk(stack, key);
  });

  afterAll(async () => {
    await stack?.stop();
    await upstream?.close();
  });

  const failures: UpstreamFailureRow[] = [
    ...SHARED_UPSTREAM_FAILURES,
    {
      name: 'upstream 400 keeps its message',
      knobs: { fake_fail: 'status:400', fake_error_message: 'prompt contains a forbidden token' },
      status: 400,
      cls: BadRequestError,
      type: 'invalid_request_error',
      message: /prompt contains a forbidden token/,
    },
    {
      name: 'upstream 400 context_length_exceeded',
      knobs: { fake_fail: 'context-length' },
      status: 400,
      cls: BadRequestError,
      type: 'invalid_request_error',
      param: 'prompt',
      code: 'context_length_exceeded',
      message: /maximum context length is 4096 tokens/,
    },
    {
      name: 'upstream 400 echoing the upstream key',
      knobs: { fake_fail: 'status:400', fake_error_message: `Incorrect API key provided: ${UPSTREAM_KEY}` },
      status: 400,
      cls: BadRequestError,
      message: /Incorrect API key provided/,
    },
    {
      name: 'upstream 422',
      knobs: { fake_fail: 'status:422', fake_error_message: 'prompt plus max_tokens exceeds the context' },
      status: 422,
      cls: UnprocessableEntityError,
      type: 'invalid_request_error',
      message: /prompt plus max_tokens exceeds the context/,
    },
    {
      name: 'upstream 404 for its model',
      model: 'up-missing',
      status: BAD_GATEWAY,
      cls: InternalServerError,
      type: 'server_error',
      message: /upstream/,
    },
    {
      name: "no answer within the deployment's timeout",
      model: 'slow',
      knobs: { fake_fail: 'hang' },
      status: 504,
      cls: InternalServerError,
      type: 'server_error',
      message: /time/,
    },
  ];
  const rows = failureCases(failures);

  it.each(rows)('$name ($mode) → $status', async (row) => {
    const body = { model: row.model ?? 'up', prompt: 'a b c', stream: row.stream, ...row.knobs };
    const res = await raw(stack, body, { key });
    const statuses = [row.status].flat();
    expect(statuses, res.text).toContain(res.status);
    // Late commit: a stream that fails before its first token is a plain JSON error, not SSE.
    const err = expectOpenAIError(res, res.status, {
      type: row.type,
      param: row.param,
      code: row.code,
      message: row.message,
    });
    expect(res.status).not.toBe(401);
    expect(res.text).not.toContain(UPSTREAM_KEY);
    expect(err.message).not.toContain(UPSTREAM_KEY);
    if (row.retryAfter === true) {
      expect(res.headers.get('retry-after')).toBe('1');
    }
    const sdkErr = await rejection(
      (async () => {
        const out = await client.completions.create(body as OpenAI.CompletionCreateParams);
        if (row.stream) {
          for await (const _ of out as AsyncIterable<unknown>) {
            // A failure before the first token must surface as the status, not mid-iteration.
          }
        }
        return out;
      })(),
    );
    expect(sdkErr).toBeInstanceOf(row.cls);
    expect(statuses).toContain(sdkErr.status);
    expect(sdkErr.message).not.toContain(UPSTREAM_KEY);
  });

  it('the upstream key is really configured (the no-leak checks are not vacuous)', async () => {
    const mark = probe();
    await client.completions.create({ model: 'up', prompt: 'k', ...mark } as OpenAI.CompletionCreateParams);
    const seen = upstream.requests.find((r) => r.body.probe === mark.probe);
    expect(seen?.headers.authorization).toBe(`Bearer ${UPSTREAM_KEY}`);
  });

  it('fails over from a refused deployment to a working one before the first token', async () => {
    for (const stream of [false, true]) {
      for (let i = 0; i < 2; i++) {
        const res = await raw(stack, { model: 'failover', prompt: 'still here', stream }, { key });
        expect(res.status, res.text).toBe(200);
        const text = stream
          ? (demux(parseSse(res.text).chunks).get(0)?.text ?? '')
          : (res.json as { choices: { text: string }[] }).choices[0]?.text;
        expect(text).toBe(fakeUpstreamText('still here'));
      }
    }
  });

  describe('after the first token', () => {
    it.each(AFTER_FIRST_TOKEN_FAILURES)(
      '$name: exactly one data:{"error"} event, then data: [DONE]',
      async ({ fail, message }) => {
        const body = { model: 'up', prompt: 'one two three four five', stream: true, fake_fail: fail, fake_itl_ms: 50 };
        const res = await raw(stack, body, { key });
        expect(res.status).toBe(200);
        expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/);
        const sse = parseSse(res.text);
        expect(sse.data.at(-1)).toBe('[DONE]');
        expect(sse.data.filter((d) => d === '[DONE]')).toHaveLength(1);
        expect(sse.errors).toHaveLength(1);
        // The error is the last event: nothing after it but [DONE].
        expect(sse.data.at(-2)).toBe(JSON.stringify(sse.errors[0]));
        const error = sse.errors[0]?.error;
        expect(Object.keys(error ?? {}).sort()).toEqual(['code', 'message', 'param', 'type']);
        expect(error?.type).toBe('server_error');
        expect(error?.message).toMatch(message);
        const text = demux(sse.chunks).get(0)?.text ?? '';
        expect(text.length).toBeGreaterThan(0);
        expect(fakeUpstreamText('one two three four five').startsWith(text)).toBe(true);
        expect(res.text).not.toContain(UPSTREAM_KEY);
      },
    );

    it('the SDK raises an APIError while iterating, after the first tokens', async () => {
      const stream = await client.completions.create({
        model: 'up',
        prompt: 'one two three four five',
        stream: true,
        ...({ fake_fail: 'reset-after:2', fake_itl_ms: 50 } as Record<string, unknown>),
      });
      let text = '';
      const err = await rejection(
        (async () => {
          for await (const chunk of stream) {
            text += chunk.choices.map((c) => c.text).join('');
          }
        })(),
      );
      expect(text).toBe(' echo: one');
      expect(err.status).toBeUndefined();
      expect(err.message).toMatch(/terminated/);
    });

    it('a deployment timeout that expires mid-stream is reported in-band', async () => {
      const body = { model: 'slow', prompt: 'a b c d e f g h', stream: true, fake_itl_ms: 300 };
      const res = await raw(stack, body, { key });
      expect(res.status).toBe(200);
      const sse = parseSse(res.text);
      expect(sse.chunks.length).toBeGreaterThan(0);
      expect(sse.errors).toHaveLength(1);
      expect(sse.errors[0]?.error).toMatchObject({ type: 'server_error', code: 'timeout' });
      expect(sse.data.at(-1)).toBe('[DONE]');
    });
  });
});
