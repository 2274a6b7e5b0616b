import { randomUUID } from 'node:crypto';
import { APIUserAbortError } from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectOpenAIError, fakeUpstreamText, sdk } from '../support/contract-helpers';
import { type FakeUpstream, startFakeUpstream } from '../support/fake-upstream';
import { alive, waitForWorkers } from '../support/processes';
import { upstreamDeployment, writeModelList } from '../support/router-config';
import {
  completionText,
  sleep,
  timedCompletion,
  waitForWaiting,
  waitingGauge,
  waitingJobs,
} from '../support/scheduling';
import { Stack } from '../support/stack';
import { waitUntil } from '../support/wait';

/**
 * Issue 12, item 6: requests that wait for capacity and lose their client or their gateway.
 * A client that disconnects while waiting leaves the queue at once (no upstream call, its
 * per-token slot released); a gateway SIGKILLed while requests wait leaves nothing behind:
 * those requests never reach the upstream, and the queue holds nothing for them afterwards.
 */

const CAP = 2;
const PER_WORKER = 4;

describe('scheduling faults: waiting requests that lose their client or their gateway', () => {
  let capped: FakeUpstream;
  let stack: Stack;

  beforeAll(async () => {
    capped = await startFakeUpstream();
    stack = await Stack.start('scheduling-faults', {
      routerConfig: writeModelList(upstreamDeployment('capped', capped.url, { max_parallel_requests: CAP })),
      workers: 2,
      env: { AQUEDUCT_COMMIT_TIMEOUT_MS: '30000' },
      workerEnv: { WORKER_CONCURRENCY: String(PER_WORKER) },
    });
    await waitForWorkers(stack, 2, 15_000);
  });

  afterAll(async () => {
    await stack?.stop();
    await capped?.close();
  });

  const seen = (probe: string) => capped.requests.filter((r) => r.body.probe === probe).length;
  /** Nothing waits for `capped`: neither in Redis nor in the gateway's gauge (when it has one). */
  const nothingWaits = async (base: string) =>
    (await waitingJobs(stack)).total === 0 && ((await waitingGauge(base, 'capped')) ?? 0) === 0;

  it('a client that disconnects while waiting leaves the queue at once: no upstream call, its slot released', async () => {
    const MAX_PARALLEL = 3;
    const holderKey = await stack.createKey({ name: 'holder' });
    const key = await stack.createKey({ name: 'leaver', max_parallel_requests: MAX_PARALLEL });
    const holders = [0, 1].map((i) =>
      timedCompletion(stack.baseUrl, holderKey, { model: 'capped', prompt: `hold ${i}`, fake_ttft_ms: 2_000 }),
    );
    await waitUntil('the holders to run', () => capped.inFlight() === CAP, 5_000);

    // Three waiting requests of the limited token: a JSON and an SSE one by fetch, one by the SDK.
    const leavers = [0, 1, 2].map((i) => ({ probe: randomUUID(), controller: new AbortController(), i }));
    const gone = leavers.map(({ probe, controller, i }) => {
      const body = { model: 'capped', prompt: `leaver ${i}`, probe, stream: i === 1 };
      if (i === 2) {
        const params = { model: 'capped', prompt: `leaver ${i}`, probe };
        return sdk(stack, key)
          .completions.create(params, { signal: controller.signal })
          .then(
            () => 'answered',
            (err: unknown) => (err instanceof APIUserAbortError ? 'aborted' : String(err)),
          );
      }
      return timedCompletion(stack.baseUrl, key, body, controller.signal).then(
        (res) => `answered ${res.status}`,
        (err: unknown) => ((err as Error).name === 'AbortError' ? 'aborted' : String(err)),
      );
    });
    await waitForWaiting(stack, stack.baseUrl, 'capped', 3);
    // They hold the token's three slots while they wait: a fourth is refused.
    const fourth = await timedCompletion(stack.baseUrl, key, { model: 'capped', prompt: 'fourth' });
    expectOpenAIError(fourth, 429, { code: 'concurrency_limit_exceeded' });
    expect(Number(fourth.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);

    leavers.forEach((l) => l.controller.abort());
    expect(await Promise.all(gone)).toEqual(['aborted', 'aborted', 'aborted']);
    const leftAfter = await waitUntil(
      'the queue to hold no waiting request',
      () => nothingWaits(stack.baseUrl),
      1_000,
      20,
    );
    expect(leftAfter, 'left the queue at once').toBeLessThan(1_000);

    // The slots are back: the token can send its three again (they wait for the holders).
    await sleep(100);
    expect(capped.inFlight(), 'the holders still hold both slots').toBe(CAP);
    const again = [0, 1, 2].map((i) => ({ probe: randomUUID(), i }));
    const results = await Promise.all(
      again.map(({ probe, i }) =>
        timedCompletion(stack.baseUrl, key, { model: 'capped', prompt: `again ${i}`, fake_ttft_ms: 100, probe }),
      ),
    );
    results.forEach((res, i) => {
      expect(res.status, res.text).toBe(200);
      expect(completionText(res)).toBe(fakeUpstreamText(`again ${i}`));
    });
    (await Promise.all(holders)).forEach((h) => expect(h.status, h.text).toBe(200));

    // Capacity was free for a while now: the leavers were never dispatched.
    await sleep(500);
    for (const l of leavers) {
      expect(seen(l.probe), `leaver ${l.i} reached the upstream`).toBe(0);
    }
    for (const a of again) {
      expect(seen(a.probe)).toBe(1);
    }
    expect(capped.maxInFlight()).toBeLessThanOrEqual(CAP);
    expect(await nothingWaits(stack.baseUrl)).toBe(true);
  });

  it('a gateway SIGKILLed with waiting requests: they never reach the upstream, the queue keeps nothing, a new gateway serves', async () => {
    await waitUntil('the capped upstream to be idle', () => capped.inFlight() === 0, 10_000);
    const key = await stack.createKey({ name: 'orphans' });
    const holders = [0, 1].map((i) =>
      timedCompletion(stack.baseUrl, key, {
        model: 'capped',
        prompt: `hold ${i}`,
        fake_ttft_ms: 2_000,
        probe: randomUUID(),
      }).catch(() => undefined),
    );
    await waitUntil('the holders to run', () => capped.inFlight() === CAP, 5_000);
    const orphans = Array.from({ length: 6 }, () => randomUUID());
    const lost = orphans.map((probe, i) =>
      timedCompletion(stack.baseUrl, key, {
        model: 'capped',
        prompt: `orphan ${i}`,
        probe,
        stream: i % 2 === 0,
      }).then(
        (res) => `answered ${res.status}`,
        () => 'connection lost',
      ),
    );
    await waitForWaiting(stack, stack.baseUrl, 'capped', orphans.length);

    const dead = stack.gateway;
    await dead.stop('SIGKILL');
    expect(alive(dead)).toBe(false);
    expect(await Promise.all(lost)).toEqual(orphans.map(() => 'connection lost'));
    await Promise.all(holders);
    const base = await stack.addGateway();

    // The holders' slots free up within ~2 s of their start; give the workers time to take
    // (and drop) every orphan.
    await waitUntil('the holders to end upstream', () => capped.inFlight() === 0, 10_000);
    await sleep(1_500);
    for (const [i, probe] of orphans.entries()) {
      expect(seen(probe), `orphan ${i} of the killed gateway reached the upstream`).toBe(0);
    }
    let left = await waitingJobs(stack);
    await waitUntil(
      'the queue to hold nothing for the orphans',
      async () => {
        left = await waitingJobs(stack);
        return left.total === 0 && ((await waitingGauge(base, 'capped')) ?? 0) === 0;
      },
      10_000,
      100,
    ).catch((err: Error) => {
      throw new Error(`${err.message}: ${JSON.stringify(left.keys)}`, { cause: err });
    });

    // New requests through the new gateway are served, right away.
    const fresh = await Promise.all(
      [0, 1, 2].map((i) =>
        timedCompletion(base, key, { model: 'capped', prompt: `fresh ${i}`, fake_ttft_ms: 100, probe: randomUUID() }),
      ),
    );
    fresh.forEach((res, i) => {
      expect(res.status, res.text).toBe(200);
      expect(completionText(res)).toBe(fakeUpstreamText(`fresh ${i}`));
      expect(res.headers.get('x-aqueduct-queue-ms') ?? '(absent)').toMatch(/^\d+$/);
      expect(res.ms).toBeLessThan(2_000);
    });
    expect(stack.workers.every(alive), 'the workers survived').toBe(true);
    expect(capped.maxInFlight()).toBeLessThanOrEqual(CAP);
  });
});
