import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fakeUpstreamText, streamedText } from '../support/contract-helpers';
import type { FakeUpstream } from '../support/fake-upstream';
import { type LiveStream, openStream, postCompletion, sseOf } from '../support/http';
import { alive, socketOwner, waitForWorkers } from '../support/processes';
import { queueLength } from '../support/redis-state';
import type { ProcessHandle, Stack } from '../support/stack';
import { startUpstreamStack } from '../support/upstream-stack';
import { waitUntil } from '../support/wait';

/**
 * Issue item 3: graceful shutdown. A SIGTERMed worker stops taking jobs, finishes its
 * in-flight streams within AQUEDUCT_SHUTDOWN_GRACE_MS and exits, leaving waiting jobs to
 * the other workers; past the grace period its streams end with an error event. A
 * SIGTERMed gateway stops accepting and finishes its open streams within its grace period.
 */

const GATEWAY_GRACE_MS = 2_000;
const WORKER_GRACE_MS = 4_000;
const ITL_MS = 200;

const textOf = (s: LiveStream) => streamedText(sseOf(s));

/** Sends SIGTERM; resolves with the exit time. */
const terminate = (p: ProcessHandle) => p.stop('SIGTERM').then(() => Date.now());

describe('faults: graceful shutdown', () => {
  let upstream: FakeUpstream;
  let stack: Stack;
  let key: string;

  beforeAll(async () => {
    ({ upstream, stack, key } = await startUpstreamStack('faults-shutdown', {
      workers: 1,
      env: {
        AQUEDUCT_SHUTDOWN_GRACE_MS: String(GATEWAY_GRACE_MS),
        AQUEDUCT_HEARTBEAT_MS: '300',
        AQUEDUCT_IDLE_TIMEOUT_MS: '2000',
        AQUEDUCT_COMMIT_TIMEOUT_MS: '30000',
      },
      // One job per worker, so which worker runs what is under the test's control.
      workerEnv: { AQUEDUCT_SHUTDOWN_GRACE_MS: String(WORKER_GRACE_MS), WORKER_CONCURRENCY: '1' },
    }));
  });

  afterAll(async () => {
    await stack?.stop();
    await upstream?.close();
  });

  const requestsOf = (probe: string) => upstream.requests.filter((r) => r.body.probe === probe);
  const words = (n: number, tag: string) => Array.from({ length: n }, (_, i) => `${tag}${i}`).join(' ');

  /** Starts a stream and waits until its upstream request is held by a worker; returns both. */
  async function streamOn(base: string, prompt: string) {
    const probe = randomUUID();
    const body = { model: 'up', prompt, max_tokens: 1_000, stream: true, fake_itl_ms: ITL_MS, probe };
    const live = openStream(base, key, body);
    let holder: ProcessHandle | undefined;
    await waitUntil(`${probe} to reach a worker`, () => {
      const port = requestsOf(probe)[0]?.remotePort;
      holder = port === undefined ? undefined : socketOwner(port, upstream.port, stack.workers.filter(alive));
      return holder !== undefined;
    });
    return { probe, live, holder: holder! };
  }

  it('worker SIGTERM: finishes its in-flight stream, leaves the waiting job to another worker, exits', async () => {
    const [busy] = stack.workers;
    const long = await streamOn(stack.baseUrl, words(25, 'b')); // ~5 s on the first worker
    expect(long.holder).toBe(busy);
    const leaving = stack.addWorker();
    await waitForWorkers(stack, 2);
    const inFlight = await streamOn(stack.baseUrl, words(10, 'a')); // ~2 s on the new worker
    expect(inFlight.holder).toBe(leaving);
    // Both workers are busy: this one waits in the queue.
    const waiting = randomUUID();
    const queued = openStream(stack.baseUrl, key, { model: 'up', prompt: 'c1 c2', stream: true, probe: waiting });
    await waitUntil('the third request to be queued', async () => {
      return (await queueLength(stack, 'wait')) === 1;
    });

    const termAt = Date.now();
    const exited = terminate(leaving);
    let queuedHolder: ProcessHandle | undefined;
    await waitUntil('the queued request to reach the upstream', () => {
      const port = requestsOf(waiting)[0]?.remotePort;
      queuedHolder = port === undefined ? undefined : socketOwner(port, upstream.port, stack.workers.filter(alive));
      return queuedHolder !== undefined;
    });
    await Promise.all([inFlight.live.finished, queued.finished, long.live.finished]);
    const exitAt = await exited;

    // The in-flight stream finished whole, within the grace period.
    expect(inFlight.live.status).toBe(200);
    expect(sseOf(inFlight.live).errors).toHaveLength(0);
    expect(inFlight.live.events.at(-1)?.data).toBe('[DONE]');
    expect(textOf(inFlight.live)).toBe(fakeUpstreamText(words(10, 'a')));
    // Then the worker exited, without waiting for the whole grace period or being killed.
    expect(exitAt).toBeGreaterThanOrEqual(inFlight.live.endedAt! - 100);
    expect(exitAt - termAt).toBeLessThan(WORKER_GRACE_MS);
    expect(leaving.child.signalCode).not.toBe('SIGKILL');
    // The waiting job stayed queued: it ran on the other worker, after its long stream.
    expect(queuedHolder).toBe(busy);
    expect(textOf(queued)).toBe(fakeUpstreamText('c1 c2'));
    expect(textOf(long.live)).toBe(fakeUpstreamText(words(25, 'b')));
  }, 20_000);

  it('worker SIGTERM past the grace period: its stream gets one error event; it exits; the upstream is freed', async () => {
    await Promise.all(stack.workers.filter(alive).map(terminate));
    const short = stack.addWorker({ AQUEDUCT_SHUTDOWN_GRACE_MS: '1000' });
    await waitForWorkers(stack, 1);
    const s = await streamOn(stack.baseUrl, words(40, 'd')); // ~8 s
    expect(s.holder).toBe(short);
    await waitUntil('two chunks', () => s.live.events.length >= 2);
    const termAt = Date.now();
    const exitAt = await terminate(short);
    await s.live.finished;

    expect(exitAt - termAt).toBeLessThan(1_000 + 1_500);
    expect(short.child.signalCode).not.toBe('SIGKILL');
    const sse = sseOf(s.live);
    expect(sse.errors, 'one error event, not a silent end').toHaveLength(1);
    expect(sse.errors[0]?.error.type).toBe('server_error');
    expect(s.live.endedAt! - termAt).toBeLessThan(1_000 + 2_000);
    expect(fakeUpstreamText(words(40, 'd')).startsWith(textOf(s.live))).toBe(true);
    await waitUntil('the upstream request to be released', () => upstream.inFlight() === 0, 2_000);
  }, 20_000);

  it('gateway SIGTERM: refuses new requests at once, finishes its open stream, then exits', async () => {
    stack.addWorker({ WORKER_CONCURRENCY: '4' });
    const base = await stack.addGateway();
    await waitForWorkers(stack, 1);
    const gateway = stack.extraGateways.at(-1)!.handle;
    const s = await streamOn(base, words(6, 'e')); // ~1.2 s
    await waitUntil('the first chunk', () => s.live.events.length >= 1);
    const termAt = Date.now();
    const exited = terminate(gateway);
    await new Promise((r) => setTimeout(r, 200));

    const refused = await postCompletion(base, key, { model: 'up', prompt: 'too late' }).then(
      (res) => res.status,
      () => 'connection refused',
    );
    expect([503, 'connection refused']).toContain(refused);

    await s.live.finished;
    const exitAt = await exited;
    expect(sseOf(s.live).errors).toHaveLength(0);
    expect(s.live.events.at(-1)?.data).toBe('[DONE]');
    expect(textOf(s.live)).toBe(fakeUpstreamText(words(6, 'e')));
    expect(exitAt).toBeGreaterThanOrEqual(s.live.endedAt! - 100);
    expect(exitAt - termAt).toBeLessThan(GATEWAY_GRACE_MS + 1_000);
    expect(gateway.child.signalCode).not.toBe('SIGKILL');
    // The other gateway never noticed.
    expect((await fetch(`${stack.baseUrl}/ready`)).status).toBe(200);
  }, 20_000);

  it('gateway SIGTERM past its grace period: the open stream gets one error event; the job is dropped', async () => {
    const base = await stack.addGateway();
    const gateway = stack.extraGateways.at(-1)!.handle;
    const s = await streamOn(base, words(30, 'f')); // ~6 s
    await waitUntil('the first chunk', () => s.live.events.length >= 1);
    const termAt = Date.now();
    const exitAt = await terminate(gateway);
    await s.live.finished;

    expect(exitAt - termAt).toBeLessThan(GATEWAY_GRACE_MS + 1_500);
    expect(gateway.child.signalCode).not.toBe('SIGKILL');
    const sse = sseOf(s.live);
    expect(sse.errors, 'one error event, not a silent end').toHaveLength(1);
    expect(sse.errors[0]?.error.type).toBe('server_error');
    // Nobody listens any more: the worker abandons the job and frees the upstream.
    await waitUntil('the upstream request to be released', () => upstream.inFlight() === 0, 3_000);
    expect(requestsOf(s.probe)).toHaveLength(1);
  }, 20_000);
});
