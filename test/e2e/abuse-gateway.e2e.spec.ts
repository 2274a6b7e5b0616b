import { connect, type Socket } from 'node:net';
import Redis from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { redisNames, TokenStore, UsageStore } from '../../libs/common/src';
import { expectOpenAIError, raw, sdk } from '../support/contract-helpers';
import { PrivateRedis } from '../support/private-redis';
import { simulatorDeployment, writeModelList } from '../support/router-config';
import { Stack } from '../support/stack';
import { waitUntil } from '../support/wait';

/**
 * Issue 9: no token holder can hurt the others. Each test drives a real gateway and worker
 * the way a careless or hostile client would, and checks that the service, its memory and
 * Redis come out as they went in.
 */

/** One value of a Prometheus text exposition, e.g. `nodejs_active_resources{type="Timeout"}`. */
async function metric(base: string, series: string): Promise<number> {
  const text = await (await fetch(`${base}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? 0 : Number(line.slice(series.length + 1));
}

const TIMERS = 'nodejs_active_resources{type="Timeout"}';

function body(model: string, extra: Record<string, unknown> = {}): string {
  return JSON.stringify({ model, prompt: 'hello world', max_tokens: 4, ...extra });
}

/** A raw HTTP/1.1 request on its own socket; resolves with the socket once written. */
function rawSocket(port: number, request: string): Promise<Socket> {
  return new Promise((resolve, reject) => {
    const s = connect(port, '127.0.0.1', () => {
      s.write(request);
      resolve(s);
    });
    s.once('error', reject);
  });
}

describe('abuse: the gateway', () => {
  let stack: Stack;
  let key: string;

  beforeAll(async () => {
    stack = await Stack.start('abuse-gw', {
      routerConfig: writeModelList(
        simulatorDeployment('sim', 'lorem'),
        simulatorDeployment('slow', 'lorem', { ttft_ms: 1_500, itl_ms: 5 }),
        simulatorDeployment('held', 'lorem', { ttft_ms: 700 }),
        simulatorDeployment('forever', 'lorem', { ttft_ms: 50_000 }),
      ),
      env: { AQUEDUCT_COMMIT_TIMEOUT_MS: '300' },
    });
    key = await stack.createKey();
  });

  afterAll(async () => {
    await stack?.stop();
  });

  it('vanishing clients leave no timer, relay session or slot behind', async () => {
    const base = stack.baseUrl;
    // Warm every code path once, then take the baseline.
    await raw(stack, JSON.parse(body('sim')) as unknown, { key });
    await new Promise((r) => setTimeout(r, 500));
    const timersBefore = await metric(base, TIMERS);

    const post = (signal: AbortSignal) =>
      fetch(`${base}/v1/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
        body: body('slow', { stream: true }),
        signal,
      }).then(
        (res) => res.body?.cancel(),
        () => undefined,
      );
    const leaving: Promise<unknown>[] = [];
    for (let i = 0; i < 200; i++) {
      // Half leave before the status is committed, half after the keep-alive pings started.
      leaving.push(post(AbortSignal.timeout(i % 2 === 0 ? 100 : 600)));
    }
    // And clients that hang up while being authenticated and admitted.
    const requestText = (b: string) =>
      `POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer ${key}\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(b)}\r\n\r\n${b}`;
    for (let i = 0; i < 100; i++) {
      leaving.push(rawSocket(stack.port, requestText(body('slow', { stream: true }))).then((s) => s.destroy()));
    }
    await Promise.all(leaving);

    await waitUntil('relay sessions and token slots back to zero', async () => {
      return (
        (await metric(base, 'aqueduct_relay_sessions')) === 0 && (await metric(base, 'aqueduct_token_slots_held')) === 0
      );
    });
    // Past the ping interval: a leaked ping timer would still be alive.
    await new Promise((r) => setTimeout(r, 1_000));
    const timersAfter = await metric(base, TIMERS);
    expect(timersAfter, `timers before ${timersBefore}, after ${timersAfter}`).toBeLessThanOrEqual(timersBefore + 10);
    // And the service still serves.
    expect((await raw(stack, JSON.parse(body('sim')) as unknown, { key })).status).toBe(200);
  });

  it('takes credentials only from the Authorization header; anything else is a 401, never a 500', async () => {
    const valid = (extra: Record<string, unknown> = {}) => ({ model: 'sim', prompt: 'x', max_tokens: 2, ...extra });
    // A key in the query string or the body is not a credential.
    expectOpenAIError(await raw(stack, valid(), { path: `/v1/completions?access_token=${key}` }), 401);
    expectOpenAIError(await raw(stack, valid({ access_token: key })), 401);
    expectOpenAIError(await raw(stack, undefined, { method: 'GET', path: `/v1/models?access_token=${key}` }), 401);
    // Malformed or non-string values anywhere.
    for (const authorization of [
      'Bearer',
      'Bearer a b',
      'Basic Zm9vOmJhcg==',
      `Bearer  ${key}`,
      'Bearer ' + 'x'.repeat(5000),
    ]) {
      expectOpenAIError(await raw(stack, valid(), { headers: { authorization } }), 401);
    }
    expectOpenAIError(await raw(stack, valid({ access_token: { $gt: '' } })), 401);
    expectOpenAIError(await raw(stack, valid(), { path: '/v1/completions?access_token[a]=1&access_token=2' }), 401);
    // With the header, an access_token elsewhere is neither a conflict nor a credential.
    const both = await raw(stack, valid({ access_token: 'sk-aq-other' }), {
      key,
      path: '/v1/completions?access_token=x',
    });
    expect(both.status, both.text).toBe(200);
  });

  it('does not read the body of an unauthenticated request', async () => {
    // Were the body parsed first, these would be 400 (bad JSON) and 415 (not JSON).
    expectOpenAIError(
      await raw(stack, undefined, { rawBody: '{not json', headers: { 'content-type': 'application/json' } }),
      401,
    );
    expectOpenAIError(
      await raw(stack, undefined, { rawBody: 'hello', headers: { 'content-type': 'text/plain' } }),
      401,
    );
    const bad = await raw(stack, undefined, {
      rawBody: '{not json',
      headers: { 'content-type': 'application/json', authorization: 'Bearer sk-aq-unknown' },
    });
    expectOpenAIError(bad, 401);
  });

  it('bounds prompts, choices, max_tokens and the sizes of stop, suffix, user and logit_bias', async () => {
    const cases: [string, Record<string, unknown>, string][] = [
      ['2049 prompts', { prompt: Array.from({ length: 2049 }, () => 'a') }, 'prompt'],
      ['129 prompts × n 1', { prompt: Array.from({ length: 129 }, () => 'a') }, 'prompt'],
      ['2 prompts × n 65', { prompt: ['a', 'b'], n: 65 }, 'n'],
      ['2 prompts × best_of 65', { prompt: ['a', 'b'], n: 1, best_of: 65 }, 'best_of'],
      ['3 token-id prompts × n 43', { prompt: [[1], [2], [3]], n: 43 }, 'n'],
      ['max_tokens above the model maximum', { max_tokens: 4097 }, 'max_tokens'],
      ['a long stop sequence', { stop: ['x'.repeat(1001)] }, 'stop'],
      ['a long suffix', { suffix: 'x'.repeat(262_145) }, 'suffix'],
      ['a long user', { user: 'u'.repeat(513) }, 'user'],
      [
        'a large logit_bias',
        { logit_bias: Object.fromEntries(Array.from({ length: 1025 }, (_, i) => [String(i), 1])) },
        'logit_bias',
      ],
    ];
    for (const [name, extra, param] of cases) {
      const res = await raw(stack, { model: 'sim', prompt: 'x', ...extra }, { key });
      expect(res.status, `${name}: ${res.text}`).toBe(400);
      expect((res.json as { error: { param: string } }).error.param, name).toBe(param);
    }
    // The bounds themselves are allowed.
    const atLimit = await raw(
      stack,
      { model: 'sim', prompt: Array.from({ length: 128 }, () => 'a'), max_tokens: 1 },
      { key },
    );
    expect(atLimit.status, atLimit.text).toBe(200);
    expect((atLimit.json as { choices: unknown[] }).choices).toHaveLength(128);
    const maxOut = await raw(stack, { model: 'sim', prompt: 'x', max_tokens: 4096 }, { key });
    expect(maxOut.status, maxOut.text).toBe(200);
  });

  it('validates a 4 MiB token-id prompt cheaply and stops at its first bad element', async () => {
    const ids = Array.from({ length: 1_000_000 }, (_, i) => i % 1000);
    const bad = [...ids.slice(0, -1), -1];
    const started = Date.now();
    const res = await raw(stack, { model: 'sim', prompt: bad, max_tokens: 1 }, { key });
    const badMs = Date.now() - started;
    expect(res.status, res.text.slice(0, 300)).toBe(400);
    expect((res.json as { error: { message: string } }).error.message).toContain('prompt[999999]');
    // One error, not one per element: the message stays small.
    expect(res.text.length).toBeLessThan(500);
    const ok = await raw(stack, { model: 'sim', prompt: ids, max_tokens: 1 }, { key });
    expect(ok.status, ok.text.slice(0, 300)).toBe(200);
    // Generous: parsing 4 MiB of JSON is most of it; a per-element error object would be seconds.
    expect(badMs).toBeLessThan(5_000);
  });

  it('survives 1 000 idle or trickling sockets: normal requests still succeed, the sockets are cut off', async () => {
    const sockets: Socket[] = [];
    const closed = new Set<Socket>();
    const track = (s: Socket) => {
      sockets.push(s);
      s.on('error', () => undefined);
      s.once('close', () => closed.add(s));
      return s;
    };
    // 600 that connect and say nothing, 400 that trickle their headers a byte at a time.
    for (let i = 0; i < 600; i++) {
      track(await rawSocket(stack.port, ''));
    }
    const tricklers: Socket[] = [];
    for (let i = 0; i < 400; i++) {
      tricklers.push(track(await rawSocket(stack.port, 'POST /v1/completions HTTP/1.1\r\nHost: x\r\n')));
    }
    const trickle = setInterval(() => {
      for (const s of tricklers) {
        if (!s.destroyed) {
          s.write('X');
        }
      }
    }, 500);
    try {
      const client = sdk(stack, key);
      const results = await Promise.all(
        Array.from({ length: 40 }, () =>
          client.completions.create({ model: 'sim', prompt: 'still here', max_tokens: 3 }),
        ),
      );
      expect(results.every((r) => r.choices.length === 1)).toBe(true);
      // The server cuts them off by itself (headers timeout), not after minutes.
      await waitUntil(
        'the server to close every idle and trickling socket',
        () => closed.size === sockets.length,
        20_000,
        200,
      ).catch((err: Error) => {
        const open = (list: Socket[]) => list.filter((s) => !closed.has(s)).length;
        throw new Error(
          `${err.message}: ${open(sockets.slice(0, 600))} idle and ${open(tricklers)} trickling still open`,
        );
      });
    } finally {
      clearInterval(trickle);
      sockets.forEach((s) => s.destroy());
    }
    expect((await raw(stack, JSON.parse(body('sim')) as unknown, { key })).status).toBe(200);
  });

  it('per-token concurrency holds across two gateways, refuses with 429 + Retry-After, and gives slots back', async () => {
    const second = await stack.addGateway();
    const limited = await stack.createKey({ max_parallel_requests: 3 });
    const send = (base: string) =>
      fetch(`${base}/v1/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${limited}`, 'content-type': 'application/json' },
        body: body('held'),
      }).then(async (res) => ({ status: res.status, headers: res.headers, json: await res.json() }));
    const all = await Promise.all(Array.from({ length: 10 }, (_, i) => send(i % 2 === 0 ? stack.baseUrl : second)));
    const ok = all.filter((r) => r.status === 200);
    const refused = all.filter((r) => r.status === 429);
    expect(ok).toHaveLength(3);
    expect(refused).toHaveLength(7);
    for (const r of refused) {
      expect((r.json as { error: { code: string } }).error.code).toBe('concurrency_limit_exceeded');
      expect(Number(r.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    }
    // Slots come back when requests end: three more pass, on either gateway.
    const again = await Promise.all([send(stack.baseUrl), send(second), send(second)]);
    expect(again.map((r) => r.status)).toEqual([200, 200, 200]);
  });

  it('slots held by a gateway that dies come back when their leases expire', async () => {
    const doomed = await stack.addGateway();
    const handle = stack.extraGateways.at(-1)!.handle;
    const limited = await stack.createKey({ max_parallel_requests: 2 });
    const post = (base: string, model: string, signal?: AbortSignal) =>
      fetch(`${base}/v1/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${limited}`, 'content-type': 'application/json' },
        body: body(model),
        signal,
      });
    const holders = [0, 1].map(() => post(doomed, 'forever', AbortSignal.timeout(60_000)).catch(() => undefined));
    await waitUntil('both slots taken', async () => (await metric(doomed, 'aqueduct_token_slots_held')) === 2);
    await handle.stop('SIGKILL');
    await Promise.all(holders);
    expect((await post(stack.baseUrl, 'sim')).status).toBe(429);
    // Nobody renews the dead gateway's leases: within one lease period (20 s) the slots are back.
    const waited = await waitUntil(
      'a slot to come back',
      async () => (await post(stack.baseUrl, 'sim')).status === 200,
      30_000,
      1_000,
    );
    expect(waited).toBeGreaterThan(5_000);
  }, 60_000);
});

describe('abuse: refusals cost nothing durable', () => {
  let redis: PrivateRedis;
  let client: Redis;
  let stack: Stack;
  let key: string;

  beforeAll(async () => {
    redis = await PrivateRedis.start();
    stack = await Stack.start('abuse-refusals', {
      routerConfig: writeModelList(
        simulatorDeployment('sim', 'lorem'),
        simulatorDeployment('other', 'lorem'),
        simulatorDeployment('held', 'lorem', { ttft_ms: 700 }),
      ),
      env: { REDIS_URL: redis.url, AQUEDUCT_DEFAULT_MAX_PARALLEL: '2' },
    });
    client = new Redis(redis.url, { maxRetriesPerRequest: 1 });
    key = (await new TokenStore(client, redisNames(stack.prefix)).create({ name: 'refusals', models: ['sim', 'held'] }))
      .key;
  });

  afterAll(async () => {
    await stack?.stop();
    client?.disconnect();
    await redis?.stop();
  });

  const usedMemory = async () => Number(/used_memory:(\d+)/.exec(await client.info('memory'))?.[1]);

  async function flood(n: number): Promise<void> {
    const kinds = [
      () => raw(stack, {}, { key }), // 400
      () => raw(stack, { model: 'other', prompt: 'x' }, { key }), // 403
      () => raw(stack, { model: 'nope', prompt: 'x' }, { key }), // 404
      () => raw(stack, { model: 'sim', prompt: 'x' }), // 401
    ];
    for (let i = 0; i < n; i += 50) {
      await Promise.all(Array.from({ length: Math.min(50, n - i) }, (_, j) => kinds[(i + j) % kinds.length]!()));
    }
  }

  it('a flood of 5 000 refusals stores no record and keeps Redis memory flat', async () => {
    const names = redisNames(stack.prefix);
    await flood(400); // warm-up: the counters' fields exist from here on
    await new Promise((r) => setTimeout(r, 1_500));
    const before = await usedMemory();
    await flood(5_000);
    await new Promise((r) => setTimeout(r, 1_500)); // one refusal-counter flush
    const grown = (await usedMemory()) - before;
    expect(grown, `Redis grew by ${grown} bytes`).toBeLessThan(300_000);
    expect(await client.exists(names.usageLog)).toBe(0);
    // Counted, by token, model and status, in a fixed number of fields.
    const counts = await client.hgetall(names.refusals);
    const total = Object.values(counts).reduce((n, v) => n + Number(v), 0);
    expect(total).toBe(5_400);
    expect(Object.keys(counts).length).toBeLessThanOrEqual(4);
    const tokenId = (await new TokenStore(client, names).list())[0]!.id;
    expect(counts[`${tokenId}|other|403`]).toBe(String(5_400 / 4));
    expect(counts[`-||401`]).toBe(String(5_400 / 4));
    // What the admin API and `aqueduct usage` report.
    const refused = await new UsageStore(client, names, 3_600_000).refusals({ tokenId });
    expect(refused.map((r) => [r.model, r.status, r.count]).sort()).toEqual(
      [
        [null, 400, 5_400 / 4],
        [null, 404, 5_400 / 4],
        ['other', 403, 5_400 / 4],
      ].sort(),
    );
  });

  it('admitted requests keep exactly one usage record each; the default max_parallel applies', async () => {
    const names = redisNames(stack.prefix);
    const results = await Promise.all(
      Array.from({ length: 4 }, () => raw(stack, { model: 'held', prompt: 'x', max_tokens: 2 }, { key })),
    );
    // AQUEDUCT_DEFAULT_MAX_PARALLEL=2 on this stack, and the token has no value of its own.
    const ok = results.filter((r) => r.status === 200).length;
    expect(ok).toBe(2);
    expect(results.filter((r) => r.status === 429)).toHaveLength(2);
    // The two 429s were refusals: no record of their own.
    await waitUntil('one usage record per admitted request', async () => (await client.xlen(names.usageLog)) === ok);
    await new Promise((r) => setTimeout(r, 500));
    expect(await client.xlen(names.usageLog)).toBe(ok);
  });
});
