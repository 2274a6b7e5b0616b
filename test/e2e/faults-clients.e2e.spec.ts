import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { fakeUpstreamText } from '../support/contract-helpers';
import type { FakeUpstream } from '../support/fake-upstream';
import { openStream } from '../support/http';
import { queueLength, usageRecords } from '../support/redis-state';
import type { Stack } from '../support/stack';
import { startUpstreamStack } from '../support/upstream-stack';
import { waitUntil } from '../support/wait';

/**
 * Issue items 1 and 7: a client that goes away (mid-stream or before the first token), or
 * one that reads too slowly, costs nothing for long: the cancel crosses from the gateway
 * process to whichever worker holds the job, the upstream request is aborted within a
 * second, the job ends, its usage record says so, and gateway memory stays bounded.
 */

/** Peak resident memory (VmHWM) of a process, in bytes. */
function peakRss(pid: number): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return Number(m?.[1] ?? 0) * 1024;
}

describe('faults: clients that disconnect or read slowly', () => {
  let upstream: FakeUpstream;
  let stack: Stack;
  let key: string;

  beforeAll(async () => {
    // Two workers: the cancel must reach whichever one holds each job.
    ({ upstream, stack, key } = await startUpstreamStack('faults-clients', { workers: 2 }));
  });

  afterAll(async () => {
    await stack?.stop();
    await upstream?.close();
  });

  const upstreamSaw = (probe: string) => upstream.requests.filter((r) => r.body.probe === probe).length;
  const activeJobs = () => queueLength(stack, 'active');
  const waitingJobs = () => queueLength(stack, 'wait');
  const usageOf = async (userId: string) => (await usageRecords(stack)).find((r) => r.user_id === userId);

  async function expectCancelled(probes: string[], userIds: string[], abortedAt: number): Promise<void> {
    await waitUntil('the upstream requests to be aborted', () => upstream.inFlight() === 0, 5_000);
    expect(Date.now() - abortedAt, 'upstream aborted within 1 s of the disconnect').toBeLessThan(1_000);
    // Each request reached the upstream exactly once: a disconnect is never retried.
    expect(probes.map(upstreamSaw)).toEqual(probes.map(() => 1));
    await waitUntil('the jobs to end', async () => (await activeJobs()) === 0 && (await waitingJobs()) === 0, 3_000);
    for (const userId of userIds) {
      let record: Record<string, unknown> | undefined;
      await waitUntil(`the usage record of ${userId}`, async () => (record = await usageOf(userId)) !== undefined);
      expect(record).toMatchObject({ outcome: 'client_disconnected', status: 499, model: 'up' });
    }
  }

  it('mid-stream disconnects abort every upstream request within 1 s, on both workers', async () => {
    const streams = Array.from({ length: 6 }, () => {
      const probe = randomUUID();
      const userId = `mid-${probe}`;
      const body = {
        model: 'up',
        prompt: 'w '.repeat(300),
        max_tokens: 300,
        stream: true,
        fake_itl_ms: 30,
        probe,
        user_id: userId,
      };
      return { probe, userId, live: openStream(stack.baseUrl, key, body) };
    });
    await waitUntil('two chunks on every stream', () => streams.every((s) => s.live.events.length >= 2));
    expect(upstream.inFlight()).toBe(6);
    expect(streams.every((s) => s.live.status === 200)).toBe(true);
    const abortedAt = Date.now();
    streams.forEach((s) => s.live.abort());
    await expectCancelled(
      streams.map((s) => s.probe),
      streams.map((s) => s.userId),
      abortedAt,
    );
    // The usage record counts what was actually generated before the disconnect.
    const record = await usageOf(streams[0]!.userId);
    expect(record?.completion_tokens as number).toBeGreaterThanOrEqual(2);
    expect(record?.completion_tokens as number).toBeLessThan(300);
  });

  it('disconnects before the first token (stream and not) abort the upstream within 1 s', async () => {
    const requests = [true, true, true, false].map((stream) => {
      const probe = randomUUID();
      const userId = `pre-${probe}`;
      const body = { model: 'up', prompt: 'a b c', stream, fake_ttft_ms: 20_000, probe, user_id: userId };
      return { probe, userId, live: openStream(stack.baseUrl, key, body) };
    });
    await waitUntil('all four requests to reach the upstream', () => upstream.inFlight() === 4);
    // Late commit: nothing has been sent to the clients yet.
    expect(requests.every((r) => r.live.status === undefined)).toBe(true);
    const abortedAt = Date.now();
    requests.forEach((r) => r.live.abort());
    await expectCancelled(
      requests.map((r) => r.probe),
      requests.map((r) => r.userId),
      abortedAt,
    );
  });

  it('a client that stops reading for a while but stays under the buffer cap gets its whole stream', async () => {
    // ~600 kB of SSE, produced at once and left unread for 2 s: under the 1 MiB cap.
    const word = 'y'.repeat(2_000);
    const prompt = Array.from({ length: 300 }, (_, i) => `${i}${word}`).join(' ');
    const live = openStream(stack.baseUrl, key, { model: 'up', prompt, max_tokens: 400, stream: true }, 2_000);
    await live.finished;
    expect(live.status).toBe(200);
    expect(live.events.at(-1)?.data).toBe('[DONE]');
    const text = live.events
      .slice(0, -1)
      .map((e) => (JSON.parse(e.data) as { choices: { text: string }[] }).choices.map((c) => c.text).join(''))
      .join('');
    expect(text).toBe(fakeUpstreamText(prompt));
  });

  it('clients that stop reading are cut off at the buffer cap; gateway memory stays bounded', async () => {
    // Each stream would be ~40 MB of SSE (100 choices x 200 tokens of 2 kB): 8 of them,
    // buffered without bound, would add ~320 MB to the gateway.
    const word = 'z'.repeat(2_000);
    const prompt = Array.from({ length: 200 }, (_, i) => `${i}${word}`).join(' ');
    const clients = 8;
    const wouldBe = clients * 100 * 200 * 2_000;
    const pid = stack.gateway.child.pid!;
    const before = peakRss(pid);
    const sockets: Socket[] = [];
    const received: number[] = [];
    const closed: Promise<void>[] = [];
    const probes = Array.from({ length: clients }, () => randomUUID());
    for (let i = 0; i < clients; i++) {
      const body = JSON.stringify({
        model: 'up',
        prompt,
        n: 100,
        max_tokens: 500,
        stream: true,
        user_id: `slow-${i}`,
        probe: probes[i],
      });
      const socket = connect({ host: '127.0.0.1', port: stack.port });
      socket.pause(); // never read: the kernel buffers fill, then the gateway's
      socket.write(
        `POST /v1/completions HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer ${key}\r\n` +
          `content-type: application/json\r\ncontent-length: ${Buffer.byteLength(body)}\r\n\r\n${body}`,
      );
      received.push(0);
      socket.on('data', (d: Buffer) => (received[i]! += d.length));
      closed.push(new Promise((resolve) => socket.once('close', () => resolve())));
      socket.on('error', () => undefined);
      sockets.push(socket);
    }
    try {
      await waitUntil('the upstream to start the slow streams', () => probes.every((p) => upstreamSaw(p) === 1));
      // Past the cap the gateway cancels: every upstream request ends although no client closed.
      await waitUntil('the slow streams to be cancelled upstream', () => upstream.inFlight() === 0, 30_000);
      const growth = peakRss(pid) - before;
      expect(growth, `gateway peak RSS grew by ${growth} bytes`).toBeLessThan(Math.min(wouldBe / 3, 96 * 1024 * 1024));
      // The clients were cut: reading now reaches the end of a truncated stream (no [DONE]).
      sockets.forEach((s) => s.resume());
      await Promise.race([
        Promise.all(closed),
        new Promise((_, reject) => setTimeout(() => reject(new Error('slow clients were not cut off')), 10_000)),
      ]);
      expect(received.every((n) => n > 0 && n < wouldBe / clients)).toBe(true);
      for (let i = 0; i < clients; i++) {
        let record: Record<string, unknown> | undefined;
        await waitUntil(
          `the usage record of slow-${i}`,
          async () => (record = await usageOf(`slow-${i}`)) !== undefined,
        );
        expect(record?.outcome).toBe('client_disconnected');
      }
    } finally {
      sockets.forEach((s) => s.destroy());
    }
    // The gateway is still healthy afterwards.
    expect(stack.gateway.child.exitCode).toBeNull();
    expect((await fetch(`${stack.baseUrl}/ready`)).status).toBe(200);
  }, 60_000);
});
