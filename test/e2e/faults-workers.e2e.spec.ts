import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fakeUpstreamText, parseSse, raw, streamedText } from '../support/contract-helpers';
import type { FakeUpstream } from '../support/fake-upstream';
import { openStream, sseOf } from '../support/http';
import { alive, socketOwner, waitForWorkers } from '../support/processes';
import { queueLength } from '../support/redis-state';
import type { ProcessHandle, Stack } from '../support/stack';
import { startUpstreamStack } from '../support/upstream-stack';
import { waitUntil } from '../support/wait';

/**
 * Issue items 2 and 4: workers that die. SIGKILL mid-stream → one error event within the
 * idle timeout, never a silent end; SIGKILL before the first token → run again on another
 * worker, at most once. With no live worker the gateway answers 503 + Retry-After at once,
 * yet a request sent while a worker restarts within the heartbeat's lifetime completes.
 */

const IDLE_MS = 1_500;
const HEARTBEAT_MS = 300;

describe('faults: workers that die', () => {
  let upstream: FakeUpstream;
  let stack: Stack;
  let key: string;

  beforeAll(async () => {
    ({ upstream, stack, key } = await startUpstreamStack('faults-workers', {
      workers: 3,
      env: {
        AQUEDUCT_IDLE_TIMEOUT_MS: String(IDLE_MS),
        AQUEDUCT_HEARTBEAT_MS: String(HEARTBEAT_MS),
        // Long enough that failures before the first token stay real HTTP statuses.
        AQUEDUCT_COMMIT_TIMEOUT_MS: '30000',
      },
    }));
    await waitForWorkers(stack, 3, 15_000);
  });

  afterAll(async () => {
    await stack?.stop();
    await upstream?.close();
  });

  const live = () => stack.workers.filter(alive);
  const requestsOf = (probe: string) => upstream.requests.filter((r) => r.body.probe === probe);

  async function ensureWorkers(n: number): Promise<void> {
    while (live().length < n) {
      stack.addWorker();
    }
    await waitForWorkers(stack, live().length, 15_000);
  }

  /** The worker holding the upstream request number `index` of `probe`. */
  async function holderOf(probe: string, index = 0): Promise<ProcessHandle> {
    let owner: ProcessHandle | undefined;
    await waitUntil(`the worker holding attempt ${index} of ${probe}`, () => {
      const req = requestsOf(probe)[index];
      owner = req?.remotePort === undefined ? undefined : socketOwner(req.remotePort, upstream.port, live());
      return owner !== undefined;
    });
    return owner!;
  }

  it('a worker SIGKILLed mid-stream: one error event within the idle timeout, and no re-run', async () => {
    await ensureWorkers(3);
    const probe = randomUUID();
    const prompt = Array.from({ length: 60 }, (_, i) => `w${i}`).join(' ');
    const body = { model: 'up', prompt, max_tokens: 1_000, stream: true, fake_itl_ms: 50, probe };
    const stream = openStream(stack.baseUrl, key, body);
    await waitUntil('three chunks', () => stream.events.length >= 3);
    const holder = await holderOf(probe);
    const killedAt = Date.now();
    await holder.stop('SIGKILL');
    await stream.finished;

    expect(stream.status).toBe(200);
    const sse = sseOf(stream);
    expect(sse.errors, 'exactly one error event, not a silent end').toHaveLength(1);
    expect(sse.errors[0]?.error.type).toBe('server_error');
    const errorAt = stream.events.find((e) => e.data.startsWith('{"error"'))!.at;
    expect(errorAt - killedAt, 'error within the idle timeout (plus one sweep)').toBeLessThan(IDLE_MS + 1_000);
    // Nothing but [DONE] may follow the error; the text before it is a true prefix.
    const afterError = sse.data.slice(sse.data.indexOf(JSON.stringify(sse.errors[0])) + 1);
    expect(afterError.every((d) => d === '[DONE]')).toBe(true);
    const text = streamedText(sse);
    expect(text.length).toBeGreaterThan(0);
    expect(fakeUpstreamText(prompt).startsWith(text)).toBe(true);
    expect(text).not.toBe(fakeUpstreamText(prompt));
    // Output had reached the client: the request is not run again on the other workers.
    await new Promise((r) => setTimeout(r, IDLE_MS));
    expect(requestsOf(probe)).toHaveLength(1);
  });

  it.each([true, false])(
    'a worker SIGKILLed before the first token (stream: %s): run once more on another worker, transparently',
    async (streamed) => {
      await ensureWorkers(3);
      const probe = randomUUID();
      const prompt = 'retried but whole';
      const pending = raw(stack, { model: 'up', prompt, stream: streamed, fake_ttft_ms: 1_500, probe }, { key });
      const holder = await holderOf(probe);
      await holder.stop('SIGKILL');
      const res = await pending;

      expect(res.status, res.text).toBe(200);
      const text = streamed
        ? streamedText(parseSse(res.text))
        : (res.json as { choices: { text: string }[] }).choices[0]?.text;
      // Exactly the upstream's answer: nothing lost, nothing doubled by the re-run.
      expect(text).toBe(fakeUpstreamText(prompt));
      if (streamed) {
        expect(parseSse(res.text).errors).toHaveLength(0);
      }
      const attempts = requestsOf(probe);
      expect(attempts).toHaveLength(2);
      // The second attempt ran on a worker that is still alive, i.e. not the killed one.
      const rerunBy = socketOwner(attempts[1]!.remotePort!, upstream.port, live());
      expect(rerunBy).toBeDefined();
      expect(rerunBy).not.toBe(holder);
    },
  );

  it('a request whose second worker also dies before the first token fails; never a third attempt', async () => {
    await ensureWorkers(3);
    const probe = randomUUID();
    const pending = raw(stack, { model: 'up', prompt: 'x', stream: true, fake_ttft_ms: 20_000, probe }, { key });
    await (await holderOf(probe, 0)).stop('SIGKILL');
    const second = await holderOf(probe, 1);
    const killedAt = Date.now();
    await second.stop('SIGKILL');
    const res = await pending;

    expect(Date.now() - killedAt).toBeLessThan(IDLE_MS + 1_000);
    expect([502, 503], res.text).toContain(res.status);
    expect((res.json as { error: { type: string } }).error.type).toBe('server_error');
    // A third worker is alive and idle, yet the request was not run a third time.
    expect(live().length).toBeGreaterThanOrEqual(1);
    await new Promise((r) => setTimeout(r, IDLE_MS));
    expect(requestsOf(probe)).toHaveLength(2);
  });

  it('with no live worker: 503 + Retry-After at once, streamed or not, and /ready is 503', async () => {
    await Promise.all(live().map((w) => w.stop('SIGKILL')));
    await waitUntil('/ready to report no worker', async () => (await fetch(`${stack.baseUrl}/ready`)).status === 503);
    const waitingBefore = await queueLength(stack, 'wait');
    for (const stream of [false, true]) {
      const started = Date.now();
      const res = await raw(stack, { model: 'up', prompt: 'anyone there', stream }, { key });
      expect(Date.now() - started, 'refused at once, not queued').toBeLessThan(500);
      expect(res.status, res.text).toBe(503);
      expect(Number(res.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
      expect((res.json as { error: { type: string } }).error.type).toBe('server_error');
    }
    expect(await queueLength(stack, 'wait')).toBe(waitingBefore);
  });

  it('a request sent while the only worker restarts quickly waits for it and completes', async () => {
    await ensureWorkers(1);
    const [only] = live();
    const killedAt = Date.now();
    await only!.stop('SIGKILL');
    // Within the heartbeat's lifetime (3 beats) the gateway still counts the dead worker.
    const probe = randomUUID();
    const pending = raw(stack, { model: 'up', prompt: 'patience pays', stream: true, probe }, { key });
    const replacement = stack.addWorker();
    expect(Date.now() - killedAt).toBeLessThan(3 * HEARTBEAT_MS);
    const res = await pending;

    expect(res.status, res.text).toBe(200);
    const sse = parseSse(res.text);
    expect(streamedText(sse)).toBe(fakeUpstreamText('patience pays'));
    expect(sse.data.at(-1)).toBe('[DONE]');
    expect(socketOwner(requestsOf(probe)[0]!.remotePort!, upstream.port, [replacement])).toBe(replacement);
  });
});
