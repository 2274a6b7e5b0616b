import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { Cluster } from 'ioredis';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { modelQueueName, redisNames, UsageStore } from '../../libs/common/src';
import { hashSlot } from '../support/hash-slot';
import { RedisCluster } from '../support/redis-cluster';
import { simulatorDeployment, writeModelList } from '../support/router-config';
import { ROOT, Stack } from '../support/stack';
import { waitUntil } from '../support/wait';

const run = promisify(execFile);

/**
 * Models whose queues' hash tags fall in the three slot ranges `redis-cli --cluster create`
 * gives three masters (sim: 0-5460, lorem and capped: 5461-10922, echo and embed: 10923-16383),
 * so mixed traffic must leave keys on every shard.
 */
const MODELS = ['sim', 'lorem', 'echo', 'capped'] as const;

/** A real gateway and worker on a three-master Redis Cluster (AQUEDUCT_REDIS_CLUSTER=true). */
describe('on a Redis Cluster', () => {
  let cluster: RedisCluster;
  let stack: Stack;
  let key: string;
  let tokenId: string;
  let client: OpenAI;

  const aqueduct = (...args: string[]) =>
    run(process.execPath, [join(ROOT, 'bin/aqueduct.js'), ...args], {
      env: {
        PATH: process.env.PATH ?? '',
        REDIS_URL: cluster.url,
        AQUEDUCT_REDIS_CLUSTER: 'true',
        AQUEDUCT_REDIS_PREFIX: stack.prefix,
      },
    });

  beforeAll(async () => {
    cluster = await RedisCluster.start({ masters: 3 });
    stack = await cluster.stack('cluster', {
      routerConfig: writeModelList(
        simulatorDeployment('sim', 'lorem', { itl_ms: 1 }),
        simulatorDeployment('lorem', 'lorem'),
        simulatorDeployment('echo', 'echo'),
        // A capacity: its requests count turns (the per-model lease key of the admission script).
        simulatorDeployment('capped', 'echo', { max_parallel_requests: 4 }),
        simulatorDeployment('embed', 'echo', {}, { mode: 'embedding' }),
        // One request at a time, slow to start: the second one waits past the orphan check.
        simulatorDeployment('single', 'echo', { ttft_ms: 1_200, max_parallel_requests: 1 }),
      ),
    });
    // The suite's token comes from the CLI, on the same cluster.
    const { stdout } = await aqueduct('tokens', 'create', '--name', 'cluster', '--rpm', '1000', '--json');
    const created = JSON.parse(stdout) as { key: string; id: string };
    key = created.key;
    tokenId = created.id;
    client = new OpenAI({ apiKey: key, baseURL: `${stack.baseUrl}/v1`, maxRetries: 0 });
  });

  afterAll(async () => {
    await stack?.stop();
    await cluster?.stop();
  });

  it('serves a non-stream completion to a token created by the CLI', async () => {
    const res = await client.completions.create({ model: 'echo', prompt: 'one two three', max_tokens: 8 });
    expect(res.choices[0]?.text.trim()).toBe('one two three');
    expect(res.usage?.completion_tokens).toBe(3);
  });

  it('streams a completion, ending with usage when asked', async () => {
    const stream = await client.completions.create({
      model: 'echo',
      prompt: 'four five six seven',
      stream: true,
      stream_options: { include_usage: true },
    });
    let text = '';
    let usage = 0;
    for await (const chunk of stream) {
      text += chunk.choices.map((c) => c.text).join('');
      usage += chunk.usage?.completion_tokens ?? 0;
    }
    expect(text.trim()).toBe('four five six seven');
    expect(usage).toBe(4);
  });

  it('serves chat, stream and non-stream, on a model with a capacity (turns counted)', async () => {
    const messages = [{ role: 'user' as const, content: 'red green blue' }];
    const res = await client.chat.completions.create({ model: 'capped', messages });
    expect(res.choices[0]?.message.content).toBe('red green blue');
    const stream = await client.chat.completions.create({ model: 'capped', messages, stream: true });
    let text = '';
    for await (const chunk of stream) {
      text += chunk.choices[0]?.delta.content ?? '';
    }
    expect(text).toBe('red green blue');
  });

  it('serves embeddings', async () => {
    const res = await client.embeddings.create({ model: 'embed', input: ['alpha', 'beta'] });
    expect(res.data).toHaveLength(2);
    expect(res.data[0]?.embedding.length).toBe(256);
    expect(res.data[0]?.embedding).not.toEqual(res.data[1]?.embedding);
  });

  it('spreads mixed traffic of several tokens and models over every shard, and records its usage', async () => {
    const others = await Promise.all(
      [0, 1, 2].map(() => stack.tokens.create({ name: 'mixed', requests_per_minute: 100 })),
    );
    const clients = [key, ...others.map((o) => o.key)].map(
      (apiKey) => new OpenAI({ apiKey, baseURL: `${stack.baseUrl}/v1`, maxRetries: 0 }),
    );
    const results = await Promise.all(
      clients.flatMap((c, t) =>
        MODELS.map((model, m) =>
          c.completions.create({ model, prompt: `token ${t} model ${m}`, max_tokens: 4, stream: (t + m) % 2 === 0 }),
        ),
      ),
    );
    expect(results).toHaveLength(clients.length * MODELS.length);

    // Every master holds keys of this deployment: queues, limits, usage, tokens.
    const redis = stack.redis as Cluster;
    const masters = redis.nodes('master');
    expect(masters).toHaveLength(3);
    const perShard = await Promise.all(
      masters.map(async (node) => (await node.scan('0', 'MATCH', `${stack.prefix}:*`, 'COUNT', 10_000))[1]),
    );
    perShard.forEach((keys, i) => expect(keys.length, `master ${i} has no key`).toBeGreaterThan(0));
    // The model queues are on different shards, each queue whole on one.
    const names = redisNames(stack.prefix, true);
    const shardOf = (k: string) => perShard.findIndex((keys) => keys.includes(k));
    const queueShards = MODELS.map((m) => shardOf(`${names.bullPrefix}:${modelQueueName(m)}:meta`));
    expect(new Set(queueShards).size).toBe(3);
    expect(queueShards.every((s) => s >= 0)).toBe(true);
    // A token's limiter and usage log share its slot, and the four tokens use four slots.
    const ids = [tokenId, ...others.map((o) => o.token.id)];
    expect(new Set(ids.map((id) => hashSlot(names.limiter(id)))).size).toBe(4);
    ids.forEach((id) => expect(hashSlot(names.tokenUsage(id).log)).toBe(hashSlot(names.limiter(id))));

    // Usage: one record per request, for every token, read back across the per-token logs.
    const store = new UsageStore(stack.redis, names, 3_600_000);
    const expected = 4 + MODELS.length; // the earlier tests' requests of the CLI token, and this one's
    await waitUntil(
      'the usage records of every request',
      async () => (await store.query({ since: 0 })).length >= expected + 3 * MODELS.length,
      10_000,
      100,
    );
    const records = await store.query({ since: 0 });
    expect(records).toHaveLength(expected + 3 * MODELS.length + 1); // + the embeddings request
    expect(new Set(records.map((r) => r.rid)).size).toBe(records.length);
    // The merge of the per-token logs keeps each token's records in its log's order.
    for (const id of ids) {
      const own = (await store.query({ since: 0, tokenId: id })).map((r) => r.rid);
      expect(records.filter((r) => r.token_id === id).map((r) => r.rid)).toEqual(own);
    }
    for (const id of ids.slice(1)) {
      expect(await store.totals('token', id)).toMatchObject({ requests: MODELS.length, errors: 0 });
    }
    expect((await store.totals('model', 'lorem')).requests).toBe(4);

    // The CLI reads the same records.
    const { stdout } = await aqueduct('usage', '--token', tokenId, '--json');
    expect(JSON.parse(stdout)).toMatchObject({ requests: expected + 1 });
  });

  // A job that waited is checked for a live gateway (its inbox's subscribers) before it runs:
  // on a cluster the inbox is a sharded channel, which only the node owning its slot counts.
  it('runs a job that waited for capacity past the orphan check: its gateway is found listening', async () => {
    const ask = (prompt: string) =>
      client.completions.create({ model: 'single', prompt, max_tokens: 4 }).withResponse();
    const started = Date.now();
    const [first, second] = await Promise.all([ask('first in line'), ask('second in line')]);
    // Two runs of 1.2 s one after the other; a job dropped as orphaned would be answered much later.
    expect(Date.now() - started).toBeLessThan(5_000);
    expect([first.data.choices[0]?.text.trim(), second.data.choices[0]?.text.trim()].sort()).toEqual([
      'first in line',
      'second in line',
    ]);
    const waited = [first, second].map((r) => Number(r.response.headers.get('x-aqueduct-queue-ms')));
    expect(Math.max(...waited)).toBeGreaterThanOrEqual(1_000);
  });
});
