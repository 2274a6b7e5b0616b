import { randomUUID } from 'node:crypto';
import Redis from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { redisNames, TokenStore } from '../../libs/common/src';
import { expectOpenAIError, fakeUpstreamText, parseSse, raw, streamedText } from '../support/contract-helpers';
import { type FakeUpstream, startFakeUpstream } from '../support/fake-upstream';
import { openStream, sseOf } from '../support/http';
import { PrivateRedis } from '../support/private-redis';
import { readyWorkers } from '../support/processes';
import { upstreamDeployment, writeModelList } from '../support/router-config';
import { Stack } from '../support/stack';
import { waitUntil as pollUntil } from '../support/wait';

/**
 * Issue item 5: Redis goes down. Requests get 503 at once (no hang), /ready says 503, a
 * stream in flight ends with an error event, and when Redis returns the gateway and the
 * workers recover by themselves. Runs on a private redis-server that the test kills.
 */

const IDLE_MS = 1_500;
/**
 * Long enough for exponential reconnect backoffs to grow past a few seconds (a Redis
 * restart or failover commonly takes this long), short enough for CI.
 */
const OUTAGE_MS = 12_000;

/** `waitUntil` polling every 20 ms, as this suite always has (the shared default is 10 ms). */
const waitUntil = (what: string, cond: () => boolean | Promise<boolean>, timeoutMs = 10_000) =>
  pollUntil(what, cond, timeoutMs, 20);

describe('faults: Redis down and back', () => {
  let redis: PrivateRedis;
  let client: Redis;
  let upstream: FakeUpstream;
  let stack: Stack;
  let key: string;
  let tokens: { byHash: Record<string, string>; byId: Record<string, string> };

  beforeAll(async () => {
    redis = await PrivateRedis.start();
    upstream = await startFakeUpstream();
    stack = await Stack.start('faults-redis', {
      routerConfig: writeModelList(upstreamDeployment('up', upstream.url)),
      workers: 2,
      env: { REDIS_URL: redis.url, AQUEDUCT_IDLE_TIMEOUT_MS: String(IDLE_MS), AQUEDUCT_HEARTBEAT_MS: '300' },
      // One job per worker: two requests in flight at once prove that both workers consume.
      workerEnv: { WORKER_CONCURRENCY: '1' },
    });
    client = new Redis(redis.url, { maxRetriesPerRequest: 1 });
    client.on('error', () => undefined); // the test kills this Redis on purpose
    const names = redisNames(stack.prefix);
    key = (await new TokenStore(client, names).create({ name: 'faults-redis' })).key;
    // Without persistence a restarted Redis is empty: keep the tokens to put them back.
    tokens = { byHash: await client.hgetall(names.tokensByHash), byId: await client.hgetall(names.tokensById) };
  });

  afterAll(async () => {
    await stack?.stop();
    client?.disconnect();
    await redis?.stop();
    await upstream?.close();
  });

  const ready = async () => (await fetch(`${stack.baseUrl}/ready`)).status;

  it(
    'Redis down: a stream in flight ends with one error event; requests get 503 at once; /ready is 503',
    async () => {
      const probe = randomUUID();
      const prompt = Array.from({ length: 50 }, (_, i) => `r${i}`).join(' ');
      const body = { model: 'up', prompt, max_tokens: 100, stream: true, fake_itl_ms: 100, probe };
      const stream = openStream(stack.baseUrl, key, body);
      await waitUntil('two chunks', () => stream.events.length >= 2);

      const downAt = Date.now();
      await redis.stop('SIGKILL');
      await stream.finished;
      const sse = sseOf(stream);
      expect(sse.errors, 'one error event, not a silent end or a hang').toHaveLength(1);
      expect(sse.errors[0]?.error.type).toBe('server_error');
      expect(stream.events.at(-1)!.at - downAt).toBeLessThan(IDLE_MS + 1_500);
      // The worker cannot publish any more, so it stops the upstream request.
      await waitUntil('the upstream request to be released', () => upstream.inFlight() === 0, 3_000);

      // Over the whole outage: every request is refused at once, never left hanging.
      while (Date.now() - downAt < OUTAGE_MS) {
        for (const streamed of [false, true]) {
          const started = Date.now();
          const res = await raw(stack, { model: 'up', prompt: 'down', stream: streamed }, { key });
          expect(Date.now() - started, 'answered at once').toBeLessThan(1_000);
          expectOpenAIError(res, 503, { type: 'server_error' });
          expect(Number(res.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
        }
        const started = Date.now();
        expect(await ready()).toBe(503);
        expect(Date.now() - started).toBeLessThan(1_000);
        await new Promise((r) => setTimeout(r, 500));
      }
      expect(stack.gateway.child.exitCode, stack.gateway.output().slice(-3_000)).toBeNull();
      for (const w of stack.workers) {
        expect(w.child.exitCode, w.output().slice(-3_000)).toBeNull();
      }
    },
    OUTAGE_MS + 20_000,
  );

  it('Redis back: the gateway and both workers recover by themselves', async () => {
    await redis.restart();
    const backAt = Date.now();
    // A fresh connection: the test's own client may be deep in its reconnect backoff.
    const fresh = new Redis(redis.url);
    const names = redisNames(stack.prefix);
    await fresh.hset(names.tokensByHash, tokens.byHash);
    await fresh.hset(names.tokensById, tokens.byId);
    fresh.disconnect();

    // Recovery: /ready says 200 again, and requests succeed soon after Redis is back.
    let readyAt: number | undefined;
    let whole: Awaited<ReturnType<typeof raw>> | undefined;
    // Runs of identical answers, for the failure message.
    const log: { from: number; to: number; what: string }[] = [];
    await waitUntil(
      'a completion to succeed again',
      async () => {
        if (readyAt === undefined && (await ready()) === 200) {
          readyAt = Date.now();
        }
        const res = await raw(stack, { model: 'up', prompt: 'back again' }, { key });
        whole = res;
        const at = Date.now() - backAt;
        const what = `${res.status} ${res.text.slice(0, 80)}`;
        const last = log.at(-1);
        if (last?.what === what) {
          last.to = at;
        } else {
          log.push({ from: at, to: at, what });
        }
        await new Promise((r) => setTimeout(r, res.status === 200 ? 0 : 200));
        return res.status === 200;
      },
      30_000,
    );
    const okAt = Date.now();
    const runs = log.map((r) => `+${r.from}..${r.to} ms: ${r.what}`).join('\n');
    const report = `/ready 200 at +${(readyAt ?? okAt) - backAt} ms after Redis returned; answers:\n${runs}`;
    expect(okAt - backAt, `recovered within 5 s of Redis returning. ${report}`).toBeLessThan(5_000);
    // Ready means ready: not seconds of 503s after /ready says 200.
    expect(okAt - (readyAt ?? okAt), `requests succeed once /ready is 200. ${report}`).toBeLessThan(2_000);
    expect((whole?.json as { choices: { text: string }[] }).choices[0]?.text).toBe(fakeUpstreamText('back again'));
    await waitUntil('both workers to heartbeat again', async () => (await readyWorkers(stack)) === 2);

    // Streams work again (the relay inbox is subscribed again).
    const streamed = await raw(stack, { model: 'up', prompt: 'streaming again', stream: true }, { key });
    expect(streamed.status, streamed.text).toBe(200);
    const sse = parseSse(streamed.text);
    expect(streamedText(sse)).toBe(fakeUpstreamText('streaming again'));
    expect(sse.data.at(-1)).toBe('[DONE]');

    // Both workers take jobs again: with one job each, two requests are at the upstream at once.
    const pending = [0, 1].map(() => raw(stack, { model: 'up', prompt: 'p', fake_ttft_ms: 1_500 }, { key }));
    await waitUntil('two requests in flight at the upstream', () => upstream.inFlight() === 2, 1_400);
    const results = await Promise.all(pending);
    expect(results.map((r) => r.status)).toEqual([200, 200]);
  }, 40_000);
});
