import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fakeUpstreamText, raw } from '../support/contract-helpers';
import { type FakeUpstream, startFakeUpstream } from '../support/fake-upstream';
import { upstreamDeployment, writeModelList } from '../support/router-config';
import { Stack } from '../support/stack';

/**
 * WORKER_CONCURRENCY is the jobs one worker process runs at once (CONTRACT, Environment), over
 * all its models' queues together: one BullMQ Worker per model must not each take that many.
 * BullMQ fetches a Worker's jobs in a row before it starts any, so a burst on several models
 * is where a per-queue bound would show.
 */

const WORKER_CONCURRENCY = 4;
const MODELS = ['w0', 'w1', 'w2', 'w3'];

describe('worker concurrency across model queues', () => {
  let upstream: FakeUpstream;
  let stack: Stack;
  let key: string;

  beforeAll(async () => {
    upstream = await startFakeUpstream();
    stack = await Stack.start('worker-concurrency', {
      routerConfig: writeModelList(...MODELS.map((m) => upstreamDeployment(m, upstream.url))),
      workerEnv: { WORKER_CONCURRENCY: String(WORKER_CONCURRENCY) },
    });
    key = await stack.createKey({ max_parallel_requests: 100 });
  });

  afterAll(async () => {
    await stack?.stop();
    await upstream?.close();
  });

  it(`runs at most WORKER_CONCURRENCY (${WORKER_CONCURRENCY}) jobs, plus one per model, under a burst on ${MODELS.length} models`, async () => {
    const prompts = Array.from({ length: 32 }, (_, i) => `burst ${i} on ${MODELS[i % MODELS.length]!}`);
    const results = await Promise.all(
      prompts.map((prompt, i) =>
        raw(stack, { model: MODELS[i % MODELS.length], prompt, stream: i % 2 === 0, fake_ttft_ms: 150 }, { key }),
      ),
    );
    results.forEach((res, i) => {
      expect(res.status, res.text).toBe(200);
      if (i % 2 === 1) {
        expect((res.json as { choices: { text: string }[] }).choices[0]?.text).toBe(fakeUpstreamText(prompts[i]!));
      }
    });
    // A blocking fetch already waiting in Redis when the process reaches its bound may still
    // bring one job per model: that, and no more, is the documented slack.
    expect(upstream.maxInFlight()).toBeLessThanOrEqual(WORKER_CONCURRENCY + MODELS.length);
    expect(upstream.maxInFlight(), 'the bound was reached').toBeGreaterThanOrEqual(WORKER_CONCURRENCY);
  });
});

/**
 * A model at its capacity hands each freed slot to the next request in line at once, also
 * when the worker whose job ended fetches nothing more (it is at WORKER_CONCURRENCY): BullMQ
 * sets no marker for such a slot, and the workers blocked on the queue would otherwise sleep
 * until their blocking fetch times out (5 s) while requests wait for a free slot.
 */
describe('a freed slot of a model at its capacity', () => {
  const CAPACITY = 2;
  let upstream: FakeUpstream;
  let stack: Stack;
  let key: string;

  beforeAll(async () => {
    upstream = await startFakeUpstream({ record: false });
    stack = await Stack.start('worker-slots', {
      routerConfig: writeModelList(
        ...['c0', 'c1'].map((m) => upstreamDeployment(m, upstream.url, { max_parallel_requests: CAPACITY })),
      ),
      workers: 2,
      workerEnv: { WORKER_CONCURRENCY: '2' },
    });
    key = await stack.createKey({ max_parallel_requests: 100 });
  });

  afterAll(async () => {
    await stack?.stop();
    await upstream?.close();
  });

  it('goes to a waiting request at once: under steady load no request waits seconds for it', async () => {
    const until = Date.now() + 4_000;
    const waits: number[] = [];
    const client = async (c: number) => {
      while (Date.now() < until) {
        const res = await raw(
          stack,
          {
            model: `c${c % 2}`,
            prompt: `client ${c}`,
            max_tokens: 4,
            fake_ttft_ms: 10,
            fake_itl_ms: 5,
            stream: c % 2 === 0,
          },
          { key },
        );
        expect(res.status, res.text).toBe(200);
        waits.push(Number(res.headers.get('x-aqueduct-queue-ms')));
      }
    };
    await Promise.all(Array.from({ length: 12 }, (_, c) => client(c)));
    expect(waits.length).toBeGreaterThan(100);
    expect(waits.every((w) => Number.isFinite(w))).toBe(true);
    // Each request waits behind a few others of 30-50 ms each; a missed hand-over costs 5 s.
    expect(Math.max(...waits)).toBeLessThan(2_500);
  });
});
