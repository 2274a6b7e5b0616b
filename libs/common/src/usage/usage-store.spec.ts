import Redis from 'ioredis';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { PrivateRedis } from '../../../../test/support/private-redis';
import { redisNames } from '../names';
import type { UsageRecord } from './usage-record';
import { UsageStore } from './usage-store';

/** On a private server: the first test fills it up to maxmemory. */
describe('UsageStore', () => {
  let server: PrivateRedis;
  let redis: Redis;

  beforeAll(async () => {
    server = await PrivateRedis.start();
    redis = new Redis(server.url, { maxRetriesPerRequest: 1 });
  });

  afterEach(async () => {
    await redis.config('SET', 'maxmemory', '0');
  });

  afterAll(async () => {
    redis?.disconnect();
    await server?.stop();
  });

  const record = (rid: string, outcome: UsageRecord['outcome'] = 'ok', completion = 1): UsageRecord => ({
    rid,
    token_id: 'tok_1',
    model: 'sim',
    deployment: null,
    route: '/v1/completions',
    status: outcome === 'ok' ? 200 : 502,
    outcome,
    started_at: Date.now(),
    latency_ms: 1,
    queue_ms: 0,
    ttft_ms: null,
    prompt_tokens: 1,
    completion_tokens: completion,
    usage_estimated: true,
    user: null,
    user_id: null,
    ip: null,
    user_agent: null,
  });

  // Trimming must still work when Redis is full (maxmemory + noeviction).
  it('trims records past retention even when Redis refuses writes for lack of memory', async () => {
    const names = redisNames('usage-oom');
    const store = new UsageStore(redis, names, 3_600_000);
    const used = Number(/used_memory:(\d+)/.exec(await redis.info('memory'))?.[1]);
    await redis.config('SET', 'maxmemory-policy', 'noeviction');
    await redis.config('SET', 'maxmemory', String(used + 3 * 1024 * 1024));
    // Records from two hours ago, until Redis is full.
    const old = Date.now() - 2 * 3_600_000;
    const payload = 'x'.repeat(1_000);
    let full = false;
    for (let i = 0; !full && i < 20_000; i++) {
      full = await redis.xadd(names.usageLog, `${old}-${i}`, 'd', payload).then(
        () => false,
        (err: Error) => err.message.includes('OOM'),
      );
    }
    expect(full).toBe(true);
    const before = await redis.xlen(names.usageLog);

    // As every writer records: taking the request's usage claim in the same script.
    expect(await store.record(record('after-oom'), Date.now(), true, { owner: 'wk-1', ttlMs: 60_000 })).toBe(true);

    expect(await redis.xlen(names.usageLog)).toBeLessThan(before / 10);
    const [last] = await redis.xrevrange(names.usageLog, '+', '-', 'COUNT', 1);
    expect(last?.[1][1]).toContain('after-oom');
  });
  // The usage claim: whichever of worker and gateway writes first, a request keeps one record.
  it('writes a claimed record once: a second writer of the same request writes nothing, counters included', async () => {
    const names = redisNames('usage-claim');
    const store = new UsageStore(redis, names, 3_600_000);
    const now = Date.now();
    expect(await store.record(record('r1', 'error', 7), now, true, { owner: 'gateway', ttlMs: 60_000 })).toBe(true);
    expect(await store.record(record('r1', 'ok', 9), now, true, { owner: 'wk-1', ttlMs: 60_000 })).toBe(false);
    // Another request is not affected; unclaimed writes (withdrawn jobs) are not either.
    expect(await store.record(record('r2', 'ok', 3), now, true, { owner: 'wk-1', ttlMs: 60_000 })).toBe(true);
    expect(await store.record(record('r3', 'ok', 0), now)).toBe(true);

    const log = await redis.xrange(names.usageLog, '-', '+');
    expect(log.map(([, f]) => (JSON.parse(f[1] ?? '{}') as UsageRecord).rid)).toEqual(['r1', 'r2', 'r3']);
    expect(await store.totals('token', 'tok_1')).toMatchObject({ requests: 3, completion_tokens: 10 });
    expect(await redis.get(names.usageClaim('r1', 'tok_1'))).toBe('gateway');
    expect(await redis.pttl(names.usageClaim('r1', 'tok_1'))).toBeGreaterThan(50_000);
  });

  // Workers write the records of one turn in one call: each keeps its own claim and counters.
  it('writes a batch in one call, skipping only the records whose claim is taken', async () => {
    const names = redisNames('usage-batch');
    const store = new UsageStore(redis, names, 3_600_000);
    const now = Date.now();
    await store.record(record('b2', 'error', 5), now, true, { owner: 'gateway', ttlMs: 60_000 });
    const claim = { owner: 'wk-1', ttlMs: 60_000 };
    const written = await store.recordMany(
      [
        { record: record('b1', 'ok', 2), countTowardsLimits: true, claim },
        { record: record('b2', 'ok', 9), countTowardsLimits: true, claim },
        { record: { ...record('b3', 'ok', 4), token_id: 'tok_2' }, countTowardsLimits: false },
      ],
      now,
    );
    expect(written).toEqual([true, false, true]);
    const log = await redis.xrange(names.usageLog, '-', '+');
    expect(log.map(([, f]) => (JSON.parse(f[1] ?? '{}') as UsageRecord).rid)).toEqual(['b2', 'b1', 'b3']);
    expect(await store.totals('token', 'tok_1')).toMatchObject({ requests: 2, completion_tokens: 7, errors: 1 });
    expect(await store.totals('token', 'tok_2')).toMatchObject({ requests: 1, completion_tokens: 4 });
    // Only the records that count towards limits reach the token's window: b2 (gateway) and b1.
    const window = await redis.hgetall(names.limiter('tok_1'));
    expect(Object.entries(window).find(([f]) => f.startsWith('o:'))?.[1]).toBe('7');
    expect(await redis.exists(names.limiter('tok_2'))).toBe(0);
  });
});
