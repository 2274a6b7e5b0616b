import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectOpenAIError, fakeUpstreamText, parseSse, raw } from '../support/contract-helpers';
import type { FakeUpstream } from '../support/fake-upstream';
import { postCompletion, recordSse, sseOf, type TimedEvent } from '../support/http';
import { connectionsTo } from '../support/processes';
import { upstreamDeployment } from '../support/router-config';
import type { Stack } from '../support/stack';
import { startUpstreamStack } from '../support/upstream-stack';
import { waitUntil } from '../support/wait';

/**
 * Issue item 6: upstream faults, with their timing. A hang before the answer is a 504 at
 * the deployment's timeout; a stall mid-stream is one error event after the idle timeout;
 * a reset mid-stream is one error event at once; garbage or over-sized frames are a clean
 * error; and afterwards no upstream socket is left behind.
 */

const IDLE_MS = 1_500;
const DEPLOYMENT_TIMEOUT_MS = 1_000;

interface TimedStream {
  status: number;
  events: TimedEvent[];
}

/** A stream request, read to the end, that notes when each `data:` event arrived. */
async function timedStream(base: string, key: string, body: Record<string, unknown>): Promise<TimedStream> {
  const res = await postCompletion(base, key, { ...body, stream: true });
  const events: TimedEvent[] = [];
  await recordSse(res, events);
  return { status: res.status, events };
}

describe('faults: upstream failures, timing and sockets', () => {
  let upstream: FakeUpstream;
  let stack: Stack;
  let key: string;

  beforeAll(async () => {
    ({ upstream, stack, key } = await startUpstreamStack(
      'faults-upstream',
      { workers: 2, env: { AQUEDUCT_IDLE_TIMEOUT_MS: String(IDLE_MS) } },
      (url) => [
        upstreamDeployment('up', url),
        upstreamDeployment('timed', url, { timeout: DEPLOYMENT_TIMEOUT_MS / 1000 }),
      ],
    ));
  });

  afterAll(async () => {
    await stack?.stop();
    await upstream?.close();
  });

  const released = () => waitUntil('the upstream requests to be released', () => upstream.inFlight() === 0, 1_000);

  it.each([false, true])(
    "a hang before the answer is a 504 at the deployment's timeout (stream: %s)",
    async (stream) => {
      const started = Date.now();
      const res = await raw(stack, { model: 'timed', prompt: 'x', stream, fake_fail: 'hang' }, { key });
      const took = Date.now() - started;
      expectOpenAIError(res, 504, { type: 'server_error' });
      expect(took).toBeGreaterThanOrEqual(DEPLOYMENT_TIMEOUT_MS - 50);
      expect(took).toBeLessThan(DEPLOYMENT_TIMEOUT_MS + 1_500);
      await released();
    },
  );

  it('a stall mid-stream is one error event after the idle timeout', async () => {
    const prompt = 'a b c d e f g h';
    const s = await timedStream(stack.baseUrl, key, { model: 'up', prompt, fake_fail: 'stall-after:3' });
    expect(s.status).toBe(200);
    const sse = sseOf(s);
    expect(sse.chunks).toHaveLength(3);
    expect(sse.errors).toHaveLength(1);
    expect(sse.errors[0]?.error.type).toBe('server_error');
    const lastChunk = s.events.findLast((e) => e.data.includes('"choices"'))!;
    const error = s.events.find((e) => e.data.startsWith('{"error"'))!;
    expect(error.at - lastChunk.at).toBeGreaterThanOrEqual(IDLE_MS - 300);
    expect(error.at - lastChunk.at).toBeLessThan(IDLE_MS + 1_500);
    expect(fakeUpstreamText(prompt).startsWith(sse.chunks.map((c) => c.choices[0]?.text).join(''))).toBe(true);
    await released();
  });

  it('a connection reset mid-stream is one error event, at once', async () => {
    const prompt = 'a b c d e f g h';
    const s = await timedStream(stack.baseUrl, key, {
      model: 'up',
      prompt,
      fake_fail: 'reset-after:3',
      fake_itl_ms: 20,
    });
    expect(s.status).toBe(200);
    const sse = sseOf(s);
    expect(sse.chunks).toHaveLength(3);
    expect(sse.errors).toHaveLength(1);
    const lastChunk = s.events.findLast((e) => e.data.includes('"choices"'))!;
    const error = s.events.find((e) => e.data.startsWith('{"error"'))!;
    expect(error.at - lastChunk.at).toBeLessThan(500);
    // Nothing but [DONE] after the error.
    expect(sse.data.slice(sse.data.indexOf(JSON.stringify(sse.errors[0])) + 1).every((d) => d === '[DONE]')).toBe(true);
    await released();
  });

  it.each([
    { fail: 'garbage', stream: false },
    { fail: 'garbage', stream: true },
    { fail: 'oversize', stream: true },
  ])('$fail (stream: $stream) is a clean 502 error, and nothing crashes', async ({ fail, stream }) => {
    const res = await raw(stack, { model: 'up', prompt: 'x', stream, fake_fail: fail }, { key });
    const error = expectOpenAIError(res, 502, { type: 'server_error' });
    expect(error.message).not.toMatch(/this is not json|xxxxxxxx/);
    expect(res.text.length).toBeLessThan(2_000);
    await released();
    expect(stack.gateway.child.exitCode).toBeNull();
    expect(stack.workers.every((w) => w.child.exitCode === null)).toBe(true);
  });

  it('bursts of every fault at once: each is reported once, and no upstream socket is held or piles up', async () => {
    const faults = ['hang', 'stall-after:2', 'reset-after:2', 'eof-after:2', 'garbage', 'oversize'];
    const open: number[] = [];
    for (let round = 0; round < 4; round++) {
      const burst = Array.from({ length: 36 }, (_, i) => {
        const fail = faults[i % faults.length]!;
        // Without a stream there is no "mid-stream": a stall is then a hang, tested above.
        const stream = fail.startsWith('stall') || fail === 'oversize' || i % 2 === 0;
        const body = { model: fail === 'hang' ? 'timed' : 'up', prompt: `burst ${i} a b c`, stream, fake_fail: fail };
        return raw(stack, body, { key }).then((res) => ({ fail, res }));
      });
      for (const { fail, res } of await Promise.all(burst)) {
        // Reported as a status before the first token, or as one in-band error event after it.
        const reported = res.status >= 500 && res.status < 600 ? 1 : parseSse(res.text).errors.length;
        expect(reported, `${fail}: ${res.status} ${res.text.slice(0, 200)}`).toBe(1);
      }
      // No request is left open at the upstream (hung or stalled ones included)...
      await released();
      await new Promise((r) => setTimeout(r, 200));
      open.push(connectionsTo(upstream.port));
    }
    // ...and connections do not pile up from one burst to the next: the pools stay at about
    // one burst's concurrency, where leaked sockets would add up burst after burst.
    expect(Math.max(...open), `open upstream connections after each burst: ${open.join(', ')}`).toBeLessThanOrEqual(
      36 + 8,
    );
    // And the upstream still serves normally afterwards.
    const ok = await raw(stack, { model: 'up', prompt: 'still fine', stream: true }, { key });
    expect(
      parseSse(ok.text)
        .chunks.map((c) => c.choices[0]?.text)
        .join(''),
    ).toBe(fakeUpstreamText('still fine'));
  }, 30_000);
});
