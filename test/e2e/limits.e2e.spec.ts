import OpenAI, { PermissionDeniedError, RateLimitError } from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { postCompletion } from '../support/http';
import { usageRecords } from '../support/redis-state';
import { simulatorDeployment, writeModelList } from '../support/router-config';
import { Stack } from '../support/stack';

const ADMIN_KEY = 'admin-key-for-tests-0123456789';

/** Per-token access, atomic limits across gateway instances, usage accounting, admin API. */
describe('limits, access and accounting', () => {
  let stack: Stack;
  let second: string;

  beforeAll(async () => {
    const config = writeModelList(
      simulatorDeployment('sim', 'lorem'),
      simulatorDeployment('slow', 'lorem', { itl_ms: 40 }),
      simulatorDeployment('cheap', 'lorem', {}, { aliases: ['cheap-alias'], request_limit_multiplier: 2 }),
    );
    stack = await Stack.start('limits', { routerConfig: config, env: { AQUEDUCT_ADMIN_KEY: ADMIN_KEY } });
    second = await stack.addGateway();
  });

  afterAll(async () => {
    await stack?.stop();
  });

  it('lets exactly the limit through when 30 requests race on two gateway instances', async () => {
    const key = await stack.createKey({ requests_per_minute: 5 });
    const results = await Promise.all(
      Array.from({ length: 30 }, (_, i) =>
        postCompletion(i % 2 === 0 ? stack.baseUrl : second, key, { model: 'sim', prompt: `r${i}` }),
      ),
    );
    const statuses = results.map((r) => r.status);
    expect(statuses.filter((s) => s === 200)).toHaveLength(5);
    expect(statuses.filter((s) => s === 429)).toHaveLength(25);
    const refused = results.find((r) => r.status === 429)!;
    expect(Number(refused.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    expect(Number(refused.headers.get('retry-after-ms'))).toBeGreaterThan(0);
    expect(refused.headers.get('x-ratelimit-limit-requests')).toBe('5');
    expect(refused.headers.get('x-ratelimit-remaining-requests')).toBe('0');
    expect(refused.headers.get('x-ratelimit-reset-requests')).toMatch(/^\d+(ms|s|m\d+s)$/);
    const body = (await refused.json()) as { error: { code: string; type: string } };
    expect(body.error).toMatchObject({ code: 'rate_limit_exceeded', type: 'requests' });
  });

  it('counts per token: another token has its own budget', async () => {
    const [a, b] = [
      await stack.createKey({ requests_per_minute: 2 }),
      await stack.createKey({ requests_per_minute: 2 }),
    ];
    const run = (key: string) =>
      Promise.all([1, 2, 3].map(() => postCompletion(stack.baseUrl, key, { model: 'sim', prompt: 'x' })));
    for (const results of [await run(a), await run(b)]) {
      expect(results.map((r) => r.status).sort()).toEqual([200, 200, 429]);
    }
  });

  it('sends x-ratelimit headers on successes, and the SDK sees RateLimitError', async () => {
    const key = await stack.createKey({ requests_per_minute: 1, output_tokens_per_minute: 1000 });
    const ok = await postCompletion(stack.baseUrl, key, { model: 'sim', prompt: 'x' });
    expect(ok.status).toBe(200);
    expect(ok.headers.get('x-ratelimit-limit-requests')).toBe('1');
    expect(ok.headers.get('x-ratelimit-remaining-requests')).toBe('0');
    expect(ok.headers.get('x-ratelimit-limit-tokens')).toBe('1000');
    expect(ok.headers.get('x-ratelimit-limit-output-tokens')).toBe('1000');
    const client = new OpenAI({ apiKey: key, baseURL: `${stack.baseUrl}/v1`, maxRetries: 0 });
    await expect(client.completions.create({ model: 'sim', prompt: 'x' })).rejects.toBeInstanceOf(RateLimitError);
  });

  it('applies the model multiplier: multiplier 2 costs half a request', async () => {
    const key = await stack.createKey({ requests_per_minute: 2 });
    const results = await Promise.all(
      Array.from({ length: 6 }, () => postCompletion(stack.baseUrl, key, { model: 'cheap-alias', prompt: 'x' })),
    );
    expect(results.filter((r) => r.status === 200)).toHaveLength(4);
  });

  it('refuses once the window holds the output-token limit, counting real usage', async () => {
    const key = await stack.createKey({ output_tokens_per_minute: 10 });
    const first = await postCompletion(stack.baseUrl, key, { model: 'sim', prompt: 'x', max_tokens: 12 });
    expect(first.status).toBe(200);
    await new Promise((r) => setTimeout(r, 200)); // the worker accounts usage as the job ends
    const second = await postCompletion(stack.baseUrl, key, { model: 'sim', prompt: 'x', max_tokens: 12 });
    expect(second.status).toBe(429);
    expect(((await second.json()) as { error: { type: string } }).error.type).toBe('tokens');
  });

  it('counts the tokens of a stream whose client disconnected, and logs the outcome', async () => {
    const token = await stack.tokens.create({ name: 'disconnect', output_tokens_per_minute: 1000 });
    const controller = new AbortController();
    const body = { model: 'slow', prompt: 'x', max_tokens: 100, stream: true, user_id: 'u-42' };
    const res = await postCompletion(stack.baseUrl, token.key, body, controller.signal);
    const reader = res.body!.getReader();
    let text = '';
    while ((text.match(/"text":"[^"]+"/g) ?? []).length < 3) {
      const { value } = await reader.read();
      text += new TextDecoder().decode(value);
    }
    controller.abort();
    let record: Record<string, unknown> | undefined;
    for (let i = 0; i < 50 && record === undefined; i++) {
      await new Promise((r) => setTimeout(r, 100));
      record = (await usageRecords(stack)).find((r) => r.token_id === token.token.id);
    }
    expect(record).toMatchObject({
      outcome: 'client_disconnected',
      user_id: 'u-42',
      model: 'slow',
      route: '/v1/completions',
    });
    expect(record?.completion_tokens as number).toBeGreaterThanOrEqual(3);
    expect(record?.ttft_ms as number).toBeGreaterThan(0);
    const usage = await (
      await fetch(`${stack.baseUrl}/admin/usage?token=${token.token.id}&since=1h`, {
        headers: { authorization: `Bearer ${ADMIN_KEY}` },
      })
    ).json();
    expect(usage).toMatchObject({ requests: 1, completion_tokens: record?.completion_tokens });
  });

  it('enforces the model allow-list and hides other models', async () => {
    const key = await stack.createKey({ models: ['cheap'] });
    const client = new OpenAI({ apiKey: key, baseURL: `${stack.baseUrl}/v1`, maxRetries: 0 });
    expect((await client.models.list()).data.map((m) => m.id)).toEqual(['cheap']);
    await expect(client.completions.create({ model: 'sim', prompt: 'x' })).rejects.toBeInstanceOf(
      PermissionDeniedError,
    );
    // An alias resolves before the check.
    expect((await client.completions.create({ model: 'cheap-alias', prompt: 'x' })).model).toBe('cheap');
  });

  it('refuses an expired token', async () => {
    const { key } = await stack.tokens.create({ name: 'brief', expires_in: 1 });
    expect((await postCompletion(stack.baseUrl, key, { model: 'sim', prompt: 'x' })).status).toBe(200);
    await new Promise((r) => setTimeout(r, 2_100));
    const res = await postCompletion(stack.baseUrl, key, { model: 'sim', prompt: 'x' });
    expect(res.status).toBe(401);
    expect(((await res.json()) as { error: { message: string } }).error.message).toMatch(/^Expired API key/);
  });

  describe('admin API', () => {
    const admin = (path: string, init: RequestInit = {}, key = ADMIN_KEY, base = stack.baseUrl) =>
      fetch(`${base}${path}`, {
        ...init,
        headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', ...(init.headers ?? {}) },
      });

    it('refuses a missing key with 401 and an API token with 403', async () => {
      expect((await fetch(`${stack.baseUrl}/admin/tokens`)).status).toBe(401);
      expect((await admin('/admin/tokens', {}, 'not-the-admin-key')).status).toBe(401);
      expect((await admin('/admin/tokens', {}, await stack.createKey())).status).toBe(403);
    });

    it('creates, lists and revokes tokens; revocation reaches the other gateway within a second', async () => {
      const created = await admin('/admin/tokens', {
        method: 'POST',
        body: JSON.stringify({
          name: 'via-admin',
          models: ['sim'],
          requests_per_minute: 100,
          max_parallel_requests: 4,
          priority: 'low',
          expires_in: '1d',
        }),
      });
      expect(created.status).toBe(201);
      const token = (await created.json()) as {
        id: string;
        key: string;
        expires_at: number;
        created_at: number;
        max_parallel_requests: number;
        priority: string;
      };
      expect(token).toMatchObject({ max_parallel_requests: 4, priority: 'low' });
      expect(token.key).toMatch(/^sk-aq-/);
      expect(token.expires_at - token.created_at).toBe(86_400);
      expect((await postCompletion(second, token.key, { model: 'sim', prompt: 'x' })).status).toBe(200);

      const listed = await (await admin('/admin/tokens')).text();
      expect(listed).toContain(token.id);
      expect(listed).not.toContain(token.key);
      expect(listed).not.toMatch(/[0-9a-f]{64}/); // no hash either

      expect((await admin(`/admin/tokens/${token.id}`, { method: 'DELETE' })).status).toBe(200);
      await new Promise((r) => setTimeout(r, 1_100));
      expect((await postCompletion(second, token.key, { model: 'sim', prompt: 'x' })).status).toBe(401);
      expect((await admin('/admin/tokens/tok_unknown', { method: 'DELETE' })).status).toBe(404);
    });

    it('validates token creation', async () => {
      const res = await admin('/admin/tokens', { method: 'POST', body: JSON.stringify({ name: '', rpm: 'x' }) });
      expect(res.status).toBe(400);
      expect(((await res.json()) as { error: { param: string } }).error.param).toBe('name');
      for (const [field, value] of [
        ['max_parallel_requests', 0],
        ['max_parallel_requests', 1.5],
        ['priority', 'urgent'],
      ] as const) {
        const bad = await admin('/admin/tokens', {
          method: 'POST',
          body: JSON.stringify({ name: 'x', [field]: value }),
        });
        expect(bad.status, `${field}=${value}`).toBe(400);
        expect(((await bad.json()) as { error: { param: string } }).error.param).toBe(field);
      }
    });
  });

  it('never stores a plaintext key anywhere in Redis', async () => {
    const key = await stack.createKey({ requests_per_minute: 100 });
    expect((await postCompletion(stack.baseUrl, key, { model: 'sim', prompt: 'x', stream: true })).status).toBe(200);
    const dump: string[] = [];
    let cursor = '0';
    do {
      const [next, keys] = await stack.redis.scan(cursor, 'MATCH', `${stack.prefix}:*`, 'COUNT', 500);
      cursor = next;
      for (const k of keys) {
        const type = await stack.redis.type(k);
        const value =
          type === 'string'
            ? await stack.redis.get(k)
            : type === 'hash'
              ? await stack.redis.hgetall(k)
              : type === 'stream'
                ? await stack.redis.xrange(k, '-', '+')
                : type === 'zset'
                  ? await stack.redis.zrange(k, '0', '-1')
                  : type === 'list'
                    ? await stack.redis.lrange(k, 0, -1)
                    : type === 'set'
                      ? await stack.redis.smembers(k)
                      : null;
        dump.push(k, JSON.stringify(value));
      }
    } while (cursor !== '0');
    expect(dump.length).toBeGreaterThan(4);
    expect(dump.join('\n')).not.toContain(key);
    expect(dump.join('\n')).not.toContain(key.slice(6, 30));
  });
});

describe('admin API without an admin key', () => {
  let stack: Stack;
  beforeAll(async () => {
    stack = await Stack.start('noadmin');
  });
  afterAll(async () => {
    await stack?.stop();
  });

  it('answers 404 for every admin route and method', async () => {
    const key = await stack.createKey();
    for (const [method, path] of [
      ['GET', '/admin/tokens'],
      ['POST', '/admin/tokens'],
      ['DELETE', '/admin/tokens/x'],
      ['GET', '/admin/usage'],
      ['PUT', '/admin/tokens'],
    ] as const) {
      const res = await fetch(`${stack.baseUrl}${path}`, { method, headers: { authorization: `Bearer ${key}` } });
      expect(res.status, `${method} ${path}`).toBe(404);
    }
  });
});
