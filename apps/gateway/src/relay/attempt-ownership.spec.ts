import { completionJobId, modelQueueName, redisNames } from '@app/common';
import { Queue, Worker } from 'bullmq';
import Redis from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { deleteByPrefix, REDIS_URL, uniquePrefix } from '../../../../test/support/stack';
import { waitUntil } from '../../../../test/support/wait';
import { AttemptOwnership } from './attempt-ownership';

/**
 * The ownership check against a real BullMQ worker: the lock key the gateway looks for is
 * the one BullMQ holds while a job runs, and it is gone once the job ends or its worker
 * stops renewing it (a dead process).
 */

const prefix = uniquePrefix('ownership');
const names = redisNames(prefix);
const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: null });
const ownership = new AttemptOwnership(redis, names);
/** A model name BullMQ could not take as a queue name as it is (':'), as Ollama names models. */
const MODEL = 'llama3:8b';
const QUEUE = modelQueueName(MODEL);
const connection = { host: '127.0.0.1', port: Number(new URL(REDIS_URL).port || 6379), maxRetriesPerRequest: null };

afterAll(async () => {
  await deleteByPrefix(redis, prefix);
  redis.disconnect();
});

describe('AttemptOwnership', () => {
  it('is held while a worker runs the attempt, and not once the job finished', async () => {
    const queue = new Queue(QUEUE, { connection, prefix: names.bullPrefix });
    let finish!: () => void;
    const worker = new Worker(QUEUE, () => new Promise<void>((resolve) => (finish = resolve)), {
      connection,
      prefix: names.bullPrefix,
      lockDuration: 2_000,
    });
    try {
      await queue.add('m', {}, { jobId: completionJobId('rid-a', 0), removeOnComplete: true });
      await waitUntil('the job to run', () => finish !== undefined);
      expect(
        await ownership.held([
          { rid: 'rid-a', att: 0, model: MODEL },
          { rid: 'rid-a', att: 1, model: MODEL },
          { rid: 'other', att: 0, model: MODEL },
        ]),
      ).toEqual([true, false, false]);
      // Past a lock duration: still held, because the running worker renews it.
      await new Promise((r) => setTimeout(r, 2_500));
      expect(await ownership.held([{ rid: 'rid-a', att: 0, model: MODEL }])).toEqual([true]);
      finish();
      await waitUntil('the job to complete', async () => (await queue.getJobCounts('active')).active === 0);
      expect(await ownership.held([{ rid: 'rid-a', att: 0, model: MODEL }])).toEqual([false]);
    } finally {
      await worker.close(true);
      await queue.close();
    }
  }, 20_000);

  it('is not held once a dead worker stops renewing the lock', async () => {
    const queue = new Queue(QUEUE, { connection, prefix: names.bullPrefix });
    let started = false;
    const worker = new Worker(
      QUEUE,
      () => {
        started = true;
        return new Promise<void>(() => undefined);
      },
      { connection, prefix: names.bullPrefix, lockDuration: 1_000, stalledInterval: 60_000 },
    );
    try {
      await queue.add('m', {}, { jobId: completionJobId('rid-b', 0) });
      await waitUntil('the job to run', () => started);
      expect(await ownership.held([{ rid: 'rid-b', att: 0, model: MODEL }])).toEqual([true]);
      // A process that dies renews nothing: stop this one's renewals without releasing the lock.
      await worker.close(true);
      await waitUntil(
        'the lock to lapse',
        async () => !(await ownership.held([{ rid: 'rid-b', att: 0, model: MODEL }]))[0],
        5_000,
      );
      expect(await redis.exists(`${names.bullPrefix}:${QUEUE}:${completionJobId('rid-b', 0)}:lock`)).toBe(0);
    } finally {
      await queue.close();
    }
  }, 20_000);
});
