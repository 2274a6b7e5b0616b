import { randomUUID } from 'node:crypto';
import { modelQueueName, redisNames, UsageStore } from '../../libs/common/src';
import { Queue } from 'bullmq';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectOpenAIError, fakeUpstreamText } from '../support/contract-helpers';
import { type FakeUpstream, startFakeUpstream } from '../support/fake-upstream';
import { upstreamDeployment, writeModelList } from '../support/router-config';
import { completionText, timedCompletion, waitForWaiting } from '../support/scheduling';
import { REDIS_URL, Stack } from '../support/stack';
import { waitUntil } from '../support/wait';

/**
 * What a Redis failover can leave behind for a request that waits in the queue: its job gone
 * (the master acknowledged the add and died before its replica had it), or its job run with
 * none of its messages reaching the gateway. The same states are made here by hand, on one
 * Redis, to a request that waits for capacity: the gateway must notice them long before the
 * queue deadline (30 s) instead of holding the client until then.
 */

describe('a queued request whose job Redis lost', () => {
  let capped: FakeUpstream;
  let stack: Stack;
  let queue: Queue;

  beforeAll(async () => {
    capped = await startFakeUpstream();
    stack = await Stack.start('queue-loss', {
      routerConfig: writeModelList(upstreamDeployment('capped', capped.url, { max_parallel_requests: 1 })),
    });
    const url = new URL(REDIS_URL);
    queue = new Queue(modelQueueName('capped'), {
      connection: { host: url.hostname, port: Number(url.port || 6379) },
      prefix: redisNames(stack.prefix).bullPrefix,
    });
  });

  afterAll(async () => {
    await queue?.close();
    await stack?.stop();
    await capped?.close();
  });

  const seen = (probe: string) => capped.requests.filter((r) => r.body.probe === probe).length;

  /** The statuses of request `rid`'s usage records, once it has one. */
  async function recordStatuses(rid: string): Promise<number[]> {
    const store = new UsageStore(stack.redis, redisNames(stack.prefix), 3_600_000);
    const records = async () => (await store.query({ since: 0 })).filter((r) => r.rid === rid);
    await waitUntil('its usage record', async () => (await records()).length > 0);
    return (await records()).map((r) => r.status);
  }

  /** Sends a holder that takes the one slot for `holdMs`, then a request that waits behind it; returns both. */
  async function waitBehindHolder(key: string, holdMs: number) {
    const holder = timedCompletion(stack.baseUrl, key, { model: 'capped', prompt: 'hold', fake_ttft_ms: holdMs });
    await waitUntil('the holder to run', () => capped.inFlight() === 1, 5_000);
    const probe = randomUUID();
    const waiter = timedCompletion(stack.baseUrl, key, { model: 'capped', prompt: 'lost job', probe });
    await waitForWaiting(stack, stack.baseUrl, 'capped', 1);
    const [job] = await queue.getPrioritized();
    expect(job, 'the waiting job').toBeDefined();
    return { holder, waiter, probe, job: job! };
  }

  it('a job that vanished before a worker took it is run again, once, and answered long before the queue deadline', async () => {
    const key = await stack.createKey({ name: 'vanished' });
    const { holder, waiter, probe, job } = await waitBehindHolder(key, 2_500);
    await job.remove(); // what the failover left: no job, no claim

    const res = await waiter;
    expect(res.status, res.text).toBe(200);
    expect(completionText(res)).toBe(fakeUpstreamText('lost job'));
    expect(res.ms, 'answered once the holder was done, not at the queue deadline').toBeLessThan(10_000);
    expect(seen(probe), 'the upstream saw it exactly once').toBe(1);
    expect((await holder).status).toBe(200);

    // One record for the request: the lost attempt leaves none.
    const rid = (res.json as { id: string }).id.replace(/^cmpl-/, '');
    expect(await recordStatuses(rid)).toEqual([200]);
  }, 30_000);

  it('a job that ran while none of its messages reached the gateway ends with a clean 502 and one record', async () => {
    await waitUntil('the upstream to be idle', () => capped.inFlight() === 0, 10_000);
    const key = await stack.createKey({ name: 'unheard' });
    const { holder, waiter, probe, job } = await waitBehindHolder(key, 2_500);
    const rid = (job.data as { rid: string }).rid;
    // What a run whose messages were all lost leaves: its worker's claim, and no job.
    await stack.redis.set(redisNames(stack.prefix).claim(rid, 0), 'w-elsewhere', 'PX', 60_000);
    await job.remove();

    const res = await waiter;
    expectOpenAIError(res, 502, { code: 'relay_lost' });
    expect(res.ms, 'long before the queue deadline').toBeLessThan(10_000);
    expect(seen(probe)).toBe(0);
    expect((await holder).status).toBe(200);
    expect(await recordStatuses(rid)).toEqual([502]);
  }, 30_000);
});
