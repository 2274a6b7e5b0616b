import { randomBytes } from 'node:crypto';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { redisNames, UsageStore } from '../../libs/common/src';
import { postCompletion } from '../support/http';
import { RedisCluster } from '../support/redis-cluster';
import { simulatorDeployment, writeModelList } from '../support/router-config';
import { completionText, metricSum, scrapeMetrics, timedCompletion, waitForWaiting } from '../support/scheduling';
import { Stack } from '../support/stack';
import { waitUntil } from '../support/wait';

/** Service time of the capacity-1 model of the turns test. */
const SERVICE_MS = 300;
const BACKLOG = 8;
const STREAMS = 200;

/**
 * Issue 14: the limits and the scheduler hold on a three-master Redis Cluster with two gateway
 * instances on the same cluster and prefix, as they do on one Redis (test/e2e/limits,
 * abuse-gateway and scheduling): the rpm budget and the concurrency slots are counted once
 * across both gateways, tokens take turns for a model's capacity, and 200 streams over both
 * gateways each get their own exact text.
 */
describe('on a Redis Cluster, with two gateways: limits, turns and many streams', () => {
  let cluster: RedisCluster;
  let stack: Stack;
  let second: string;

  beforeAll(async () => {
    cluster = await RedisCluster.start({ masters: 3 });
    stack = await cluster.stack('cluster-limits', {
      routerConfig: writeModelList(
        simulatorDeployment('sim', 'lorem'),
        simulatorDeployment('held', 'echo', { ttft_ms: 800 }),
        simulatorDeployment('turns', 'echo', { ttft_ms: SERVICE_MS, max_parallel_requests: 1 }),
        simulatorDeployment('streams', 'echo'),
      ),
    });
    try {
      second = await stack.addGateway();
    } catch (err) {
      await stack.stop();
      await cluster.stop();
      throw err;
    }
  });

  afterAll(async () => {
    await stack?.stop();
    await cluster?.stop();
  });

  const gateway = (i: number) => (i % 2 === 0 ? stack.baseUrl : second);

  it('lets exactly the rpm limit through when 30 requests race on two gateways', async () => {
    const key = await stack.createKey({ requests_per_minute: 5 });
    const results = await Promise.all(
      Array.from({ length: 30 }, (_, i) =>
        postCompletion(gateway(i), key, { model: 'sim', prompt: `r${i}`, max_tokens: 4 }).then(async (res) => ({
          status: res.status,
          headers: res.headers,
          body: await res.text(),
          gateway: i % 2,
        })),
      ),
    );
    const ok = results.filter((r) => r.status === 200);
    const refused = results.filter((r) => r.status === 429);
    expect(ok).toHaveLength(5);
    expect(refused).toHaveLength(25);
    // Both gateways refused some: the budget is one counter in the cluster, not one per gateway.
    expect(new Set(refused.map((r) => r.gateway)).size).toBe(2);
    for (const r of refused) {
      expect((JSON.parse(r.body) as { error: { code: string } }).error.code).toBe('rate_limit_exceeded');
      expect(Number(r.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
      expect(r.headers.get('x-ratelimit-remaining-requests')).toBe('0');
    }
  });

  it('per-token concurrency holds across two gateways, refuses with 429 + Retry-After, and gives slots back', async () => {
    const key = await stack.createKey({ max_parallel_requests: 3 });
    const send = (base: string, prompt: string) =>
      postCompletion(base, key, { model: 'held', prompt, max_tokens: 4 }).then(async (res) => ({
        status: res.status,
        headers: res.headers,
        json: (await res.json()) as { error?: { code: string }; choices?: { text: string }[] },
        prompt,
      }));
    const all = await Promise.all(Array.from({ length: 10 }, (_, i) => send(gateway(i), `held ${i}`)));
    const ok = all.filter((r) => r.status === 200);
    const refused = all.filter((r) => r.status === 429);
    expect(ok).toHaveLength(3);
    expect(refused).toHaveLength(7);
    ok.forEach((r) => expect(r.json.choices?.[0]?.text).toBe(` ${r.prompt}`));
    for (const r of refused) {
      expect(r.json.error?.code).toBe('concurrency_limit_exceeded');
      expect(Number(r.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    }
    // Slots come back when requests end: three more pass, on either gateway.
    const again = await Promise.all([send(stack.baseUrl, 'again 0'), send(second, 'again 1'), send(second, 'again 2')]);
    expect(again.map((r) => r.status)).toEqual([200, 200, 200]);
  });

  it(`tokens take turns: 2 requests sent behind another token's backlog of ${BACKLOG} are not served after it`, async () => {
    const heavy = await stack.createKey({ name: 'heavy' });
    const light = await stack.createKey({ name: 'light' });
    const ask = (base: string, key: string, prompt: string) =>
      timedCompletion(base, key, { model: 'turns', prompt, max_tokens: 4 });
    const backlog = Array.from({ length: BACKLOG }, (_, i) => ask(stack.baseUrl, heavy, `heavy ${i}`));
    // One runs, the rest wait in the queue (seen from the other gateway: the queue is the cluster's).
    await waitForWaiting(stack, second, 'turns', BACKLOG - 1);
    const small = await Promise.all([0, 1].map((i) => ask(second, light, `light ${i}`)));
    const big = await Promise.all(backlog);

    [...big, ...small].forEach((r) => expect(r.status, r.text).toBe(200));
    big.forEach((r, i) => expect(completionText(r)).toBe(` heavy ${i}`));
    small.forEach((r, i) => expect(completionText(r)).toBe(` light ${i}`));
    // Turns: about one heavy request per light one (A B A B, then the rest of A: 5-6 heavy
    // requests end after the light ones). FIFO: every heavy request ends first (0).
    const lightDone = Math.max(...small.map((r) => r.endedAt));
    const heavyAfter = big.filter((r) => r.endedAt > lightDone).length;
    expect(heavyAfter, 'heavy requests that ended after the light tenant').toBeGreaterThanOrEqual(BACKLOG - 4);
    // The same in waiting times: the light tenant waits ~3 service times, the last heavy ~8.
    const lightWait = Math.max(...small.map((r) => r.queueMs));
    const heavyWait = Math.max(...big.map((r) => r.queueMs));
    expect(lightWait, `light waited ${lightWait} ms, heavy up to ${heavyWait} ms`).toBeLessThan(heavyWait * 0.6);
    // Capacity 1 held across the cluster: the ten requests ran one after another.
    const ends = [...big, ...small].map((r) => r.endedAt);
    expect(Math.max(...ends) - Math.min(...ends)).toBeGreaterThanOrEqual((BACKLOG + 1) * SERVICE_MS * 0.8);
  });

  it(`serves ${STREAMS} concurrent streams over two gateways with the openai SDK, each its own exact text`, async () => {
    const { key, token } = await stack.tokens.create({ name: 'streams', max_parallel_requests: STREAMS * 2 });
    const clients = [stack.baseUrl, second].map(
      (base) => new OpenAI({ apiKey: key, baseURL: `${base}/v1`, maxRetries: 0 }),
    );
    const salt = randomBytes(4).toString('hex');
    const prompts = Array.from({ length: STREAMS }, (_, i) => `stream ${i} of ${salt} on gateway ${i % 2}`);
    const counted = async (base: string) =>
      metricSum((await scrapeMetrics(base)).samples, 'aqueduct_time_to_first_token_seconds_count', {
        route: '/v1/chat/completions',
        model: 'streams',
      }) ?? 0;
    const before = await Promise.all([stack.baseUrl, second].map(counted));

    const texts = await Promise.all(
      prompts.map(async (content, i) => {
        const stream = await clients[i % 2]!.chat.completions.create({
          model: 'streams',
          messages: [{ role: 'user', content }],
          stream: true,
        });
        let text = '';
        for await (const chunk of stream) {
          text += chunk.choices[0]?.delta.content ?? '';
        }
        return text;
      }),
    );
    const wrong = texts.flatMap((t, i) => (t === prompts[i] ? [] : [`${i}: ${JSON.stringify(t)}`]));
    expect(wrong, 'streams whose text is not their prompt').toEqual([]);

    // Each gateway wrote the first token of its 100 streams.
    const after = await Promise.all([stack.baseUrl, second].map(counted));
    expect(after.map((n, g) => n - before[g]!)).toEqual([STREAMS / 2, STREAMS / 2]);
    // One usage record per stream, in the token's log on its shard.
    const store = new UsageStore(stack.redis, redisNames(stack.prefix, true), 3_600_000);
    const records = () => store.query({ since: 0, tokenId: token.id });
    await waitUntil(`${STREAMS} usage records`, async () => (await records()).length >= STREAMS, 10_000, 100);
    const list = await records();
    expect(list).toHaveLength(STREAMS);
    expect(new Set(list.map((r) => r.rid)).size).toBe(STREAMS);
    expect(list.every((r) => r.status === 200 && r.outcome === 'ok' && r.model === 'streams')).toBe(true);
  });
});
