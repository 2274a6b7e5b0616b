import OpenAI, { AuthenticationError, NotFoundError } from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FakeUpstream } from '../support/fake-upstream';
import { postCompletion } from '../support/http';
import { simulatorDeployment, upstreamDeployment } from '../support/router-config';
import type { Stack } from '../support/stack';
import { startUpstreamStack } from '../support/upstream-stack';

/** The whole pipeline with real processes: gateway → BullMQ → worker → upstream → pub/sub → client. */
describe('pipeline end to end', () => {
  let upstream: FakeUpstream;
  let stack: Stack;
  let key: string;
  let client: OpenAI;

  beforeAll(async () => {
    ({ upstream, stack, key } = await startUpstreamStack(
      'pipeline',
      {
        env: { TEST_UPSTREAM_KEY: 'upstream-secret-key-123' },
        workerEnv: { TEST_UPSTREAM_KEY: 'upstream-secret-key-123' },
      },
      (url) => [
        upstreamDeployment('up', url, { api_key: 'os.environ/TEST_UPSTREAM_KEY' }),
        simulatorDeployment('sim', 'lorem', { itl_ms: 1 }, { aliases: ['sim-alias'] }),
        simulatorDeployment('echo', 'echo'),
      ],
    ));
    client = new OpenAI({ apiKey: key, baseURL: `${stack.baseUrl}/v1`, maxRetries: 0 });
  });

  afterAll(async () => {
    await stack?.stop();
    await upstream?.close();
  });

  it('serves a non-stream completion from an OpenAI-compatible upstream', async () => {
    const extra = { top_k: 5, user_id: 'end-user-7' } as Record<string, unknown>;
    const res = await client.completions.create({
      model: 'up',
      prompt: 'hello there world',
      max_tokens: 10,
      temperature: 0.5,
      ...extra,
    });
    expect(res.object).toBe('text_completion');
    expect(res.model).toBe('up');
    expect(res.id).toMatch(/^cmpl-/);
    expect(res.choices).toHaveLength(1);
    expect(res.choices[0]?.text).toBe(' echo: hello there world');
    expect(res.usage?.completion_tokens).toBeGreaterThan(0);
    const forwarded = upstream.requests.at(-1);
    expect(forwarded?.headers.authorization).toBe('Bearer upstream-secret-key-123');
    expect(forwarded?.body.model).toBe('fake-model');
    // Every client parameter is forwarded, unknown ones too; Aqueduct's user_id is not.
    expect(forwarded?.body).toMatchObject({ prompt: 'hello there world', max_tokens: 10, temperature: 0.5, top_k: 5 });
    expect(forwarded?.body).not.toHaveProperty('user_id');
  });

  it('streams from the upstream, ending with [DONE], with usage only when asked', async () => {
    const stream = await client.completions.create({
      model: 'up',
      prompt: 'one two three',
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = '';
    let usageChunks = 0;
    const ids = new Set<string>();
    for await (const chunk of stream) {
      ids.add(chunk.id);
      if (chunk.choices.length === 0) {
        usageChunks += 1;
        expect(chunk.usage?.completion_tokens).toBeGreaterThan(0);
      }
      text += chunk.choices.map((c) => c.text).join('');
    }
    expect(text).toBe(' echo: one two three');
    expect(usageChunks).toBe(1);
    expect(ids.size).toBe(1);
    expect(upstream.requests.at(-1)?.body.stream_options).toEqual({ include_usage: true });
  });

  it('writes SSE frames exactly, with no usage chunk unless asked', async () => {
    const res = await postCompletion(stack.baseUrl, key, { model: 'echo', prompt: 'a b', stream: true });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/);
    expect(res.headers.get('cache-control')).toContain('no-cache');
    expect(res.headers.get('x-accel-buffering')).toBe('no');
    const body = await res.text();
    const frames = body.split('\n\n').filter(Boolean);
    expect(frames.at(-1)).toBe('data: [DONE]');
    const chunks = frames.slice(0, -1).map((f) => JSON.parse(f.replace(/^data: /, '')) as Record<string, unknown>);
    expect(chunks.every((c) => Array.isArray(c.choices) && (c.choices as unknown[]).length > 0)).toBe(true);
    expect(chunks.every((c) => !('usage' in c))).toBe(true);
    const text = chunks.map((c) => (c.choices as { text: string }[]).map((x) => x.text).join('')).join('');
    expect(text).toBe(' a b');
  });

  it('gives the same simulator text streamed and not, and resolves aliases', async () => {
    const whole = await client.completions.create({ model: 'sim-alias', prompt: 'determinism', max_tokens: 12 });
    const stream = await client.completions.create({
      model: 'sim',
      prompt: 'determinism',
      max_tokens: 12,
      stream: true,
    });
    let streamed = '';
    for await (const chunk of stream) {
      streamed += chunk.choices.map((c) => c.text).join('');
    }
    expect(whole.model).toBe('sim');
    expect(whole.choices[0]?.text.length).toBeGreaterThan(0);
    expect(streamed).toBe(whole.choices[0]?.text);
  });

  it('rejects a missing or unknown key with 401 and the OpenAI error shape', async () => {
    const bad = new OpenAI({ apiKey: 'sk-aq-not-a-real-key', baseURL: `${stack.baseUrl}/v1`, maxRetries: 0 });
    await expect(bad.completions.create({ model: 'sim', prompt: 'x' })).rejects.toBeInstanceOf(AuthenticationError);
    const res = await fetch(`${stack.baseUrl}/v1/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'sim', prompt: 'x' }),
    });
    expect(res.status).toBe(401);
    const body = (await res.json()) as { error: Record<string, unknown> };
    expect(Object.keys(body.error).sort()).toEqual(['code', 'message', 'param', 'type']);
    expect(res.headers.get('x-request-id')).toMatch(/^[0-9a-f]{32}$/);
  });

  it('answers 404 model_not_found for an unknown model', async () => {
    const err = await client.completions.create({ model: 'nope', prompt: 'x' }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NotFoundError);
    expect((err as NotFoundError).code).toBe('model_not_found');
  });

  it('lists models without duplicates', async () => {
    const page = await client.models.list();
    const ids = page.data.map((m) => m.id);
    expect(ids).toEqual(['up', 'sim', 'echo']);
    expect(page.data.every((m) => m.owned_by === 'aqueduct')).toBe(true);
  });

  it('relays 100 concurrent streams, each client receiving exactly its own text', async () => {
    const prompts = Array.from({ length: 100 }, (_, i) => `client ${i} says ${(i * 7919) % 1000} words`);
    const results = await Promise.all(
      prompts.map(async (prompt, i) => {
        const stream = await client.completions.create({
          model: i % 2 === 0 ? 'up' : 'echo',
          prompt,
          max_tokens: 50,
          stream: true,
        });
        let text = '';
        for await (const chunk of stream) {
          text += chunk.choices.map((c) => c.text).join('');
        }
        return text;
      }),
    );
    results.forEach((text, i) => {
      expect(text).toBe(i % 2 === 0 ? ` echo: ${prompts[i]}` : ` ${prompts[i]}`);
    });
  });

  it('refuses a revoked key within about a second', async () => {
    const own = await stack.tokens.create({ name: 'short-lived' });
    const c = new OpenAI({ apiKey: own.key, baseURL: `${stack.baseUrl}/v1`, maxRetries: 0 });
    await expect(c.models.list()).resolves.toBeDefined();
    await stack.tokens.revoke(own.token.id);
    await new Promise((r) => setTimeout(r, 1_100));
    await expect(c.models.list()).rejects.toBeInstanceOf(AuthenticationError);
  });

  it('aborts the upstream request when the client disconnects mid-stream', async () => {
    const controller = new AbortController();
    const body = { model: 'up', prompt: 'w '.repeat(200), max_tokens: 200, stream: true, fake_itl_ms: 50 };
    const res = await postCompletion(stack.baseUrl, key, body, controller.signal);
    const reader = res.body!.getReader();
    await reader.read();
    expect(upstream.inFlight()).toBe(1);
    controller.abort();
    const started = Date.now();
    while (upstream.inFlight() > 0 && Date.now() - started < 3_000) {
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(upstream.inFlight()).toBe(0);
    expect(Date.now() - started).toBeLessThan(1_000);
  });
});
