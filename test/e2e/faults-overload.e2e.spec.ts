import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectOpenAIError, fakeUpstreamText, parseSse, raw } from '../support/contract-helpers';
import { type FakeUpstream, startFakeUpstream } from '../support/fake-upstream';
import { postCompletion } from '../support/http';
import { socketOwner } from '../support/processes';
import { queueLength } from '../support/redis-state';
import { upstreamDeployment, writeModelList } from '../support/router-config';
import { Stack } from '../support/stack';
import { waitUntil } from '../support/wait';

/**
 * Issue item 8: overload. A deployment's max_parallel_requests holds across all workers
 * together, and a full queue is refused with Retry-After instead of growing.
 */

const CAP = 3;
const MAX_QUEUE_DEPTH = 5;
const PER_WORKER = 3;

describe('faults: overload', () => {
  let capped: FakeUpstream;
  let open: FakeUpstream;
  let stack: Stack;
  let key: string;

  beforeAll(async () => {
    [capped, open] = await Promise.all([startFakeUpstream(), startFakeUpstream()]);
    const config = writeModelList(
      upstreamDeployment('capped', capped.url, { max_parallel_requests: CAP }),
      upstreamDeployment('up', open.url),
    );
    stack = await Stack.start('faults-overload', {
      routerConfig: config,
      workers: 2,
      env: { AQUEDUCT_MAX_QUEUE_DEPTH: String(MAX_QUEUE_DEPTH), AQUEDUCT_COMMIT_TIMEOUT_MS: '30000' },
      workerEnv: { WORKER_CONCURRENCY: String(PER_WORKER) },
    });
    key = await stack.createKey();
  });

  afterAll(async () => {
    await stack?.stop();
    await Promise.all([capped?.close(), open?.close()]);
  });

  const waiting = () => queueLength(stack, 'wait');

  it(`max_parallel_requests ${CAP} holds across two workers: the upstream never sees more than ${CAP}`, async () => {
    const prompts = Array.from({ length: 9 }, (_, i) => `capped ${i} a b c d e f`);
    const results = await Promise.all(
      prompts.map((prompt, i) =>
        raw(stack, { model: 'capped', prompt, stream: i % 2 === 0, fake_itl_ms: 100, probe: randomUUID() }, { key }),
      ),
    );
    results.forEach((res, i) => {
      expect(res.status, res.text).toBe(200);
      const text =
        i % 2 === 0
          ? parseSse(res.text)
              .chunks.map((c) => c.choices[0]?.text)
              .join('')
          : (res.json as { choices: { text: string }[] }).choices[0]?.text;
      expect(text).toBe(fakeUpstreamText(prompts[i]!));
    });
    expect(capped.maxInFlight()).toBeLessThanOrEqual(CAP);
    expect(capped.maxInFlight(), 'the cap was actually reached').toBe(CAP);
    // Both workers ran capped requests, so the cap is shared, not per process.
    const owners = new Set(
      capped.requests.map((r) => socketOwner(r.remotePort!, capped.port, stack.workers)).filter((w) => w !== undefined),
    );
    expect(owners.size).toBe(2);
  });

  it('slots of cancelled requests are given back at once', async () => {
    const controllers = Array.from({ length: CAP }, () => new AbortController());
    const pending = controllers.map((c) =>
      postCompletion(
        stack.baseUrl,
        key,
        { model: 'capped', prompt: 'hold', stream: true, fake_ttft_ms: 30_000 },
        c.signal,
      ).catch(() => undefined),
    );
    await waitUntil('all slots taken', () => capped.inFlight() === CAP);
    controllers.forEach((c) => c.abort());
    await Promise.all(pending);
    const started = Date.now();
    const res = await raw(stack, { model: 'capped', prompt: 'next in line' }, { key });
    expect(res.status, res.text).toBe(200);
    expect(Date.now() - started, 'not stuck behind leaked slots').toBeLessThan(2_000);
  });

  it('a full queue is refused at once with 503 + Retry-After instead of growing', async () => {
    const holders = Array.from({ length: 2 * PER_WORKER + MAX_QUEUE_DEPTH }, () => ({
      probe: randomUUID(),
      controller: new AbortController(),
    }));
    // Every worker slot busy, then the queue filled up to its limit.
    const pending = holders.map(({ probe, controller }) =>
      postCompletion(
        stack.baseUrl,
        key,
        { model: 'up', prompt: 'hold', fake_ttft_ms: 30_000, probe },
        controller.signal,
      ).catch(() => undefined),
    );
    await waitUntil('the queue to fill', async () => (await waiting()) === MAX_QUEUE_DEPTH);
    await new Promise((r) => setTimeout(r, 700)); // the gateway refreshes its depth twice a second

    for (const stream of [false, true, false, true, false]) {
      const started = Date.now();
      const res = await raw(stack, { model: 'up', prompt: 'one more', stream }, { key });
      expect(Date.now() - started, 'refused at once').toBeLessThan(500);
      expectOpenAIError(res, 503, { type: 'server_error' });
      expect(Number(res.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    }
    expect(await waiting(), 'the queue did not grow').toBe(MAX_QUEUE_DEPTH);

    // Clients that give up while queued are withdrawn: the upstream never sees them, even
    // when the workers free up right after.
    const reached = (h: (typeof holders)[number]) => open.requests.some((r) => r.body.probe === h.probe);
    const running = holders.filter(reached);
    const queued = holders.filter((h) => !reached(h));
    expect(running).toHaveLength(2 * PER_WORKER);
    queued.forEach((h) => h.controller.abort());
    await waitUntil('the queue to empty', async () => (await waiting()) === 0, 3_000);
    running.forEach((h) => h.controller.abort());
    await Promise.all(pending);
    await waitUntil('the upstream requests to end', () => open.inFlight() === 0, 3_000);
    await new Promise((r) => setTimeout(r, 300));
    expect(queued.filter(reached)).toHaveLength(0);
    // And the gateway admits again once there is room.
    await new Promise((r) => setTimeout(r, 700));
    expect((await raw(stack, { model: 'up', prompt: 'room now' }, { key })).status).toBe(200);
  });
});
