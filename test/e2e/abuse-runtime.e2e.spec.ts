import { randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { ProcessHandle } from '../support/stack';
import { PrivateRedis } from '../support/private-redis';
import { Stack } from '../support/stack';

/**
 * Issue 9, runtime: a Redis outage must neither flood the logs nor keep a process from
 * stopping. Runs on its own password-protected redis-server (the shared one is never
 * touched): the outage is a SIGKILL of that server.
 */

const PASSWORD = `pw-${randomBytes(12).toString('hex')}`;
const GRACE_MS = 3_000;
/** What a stopping process may take beyond its grace period. */
const EXIT_MARGIN_MS = 2_000;
/** A short stand-in for the 40 s outage measured, long enough for several reconnect rounds. */
const OUTAGE_MS = 6_000;
/** Lines one process may write during the outage: one per connection role, with room to spare. */
const MAX_OUTAGE_LINES = 6;

/** The non-empty lines of `text`. */
const linesOf = (text: string) => text.split('\n').filter((l) => l.trim() !== '');

function parsesAsJson(line: string): boolean {
  try {
    return typeof JSON.parse(line) === 'object';
  } catch {
    return false;
  }
}

/** Sends SIGTERM to every process at once; resolves with how long each took to exit. */
async function terminateAll(processes: ProcessHandle[], giveUpMs: number): Promise<number[]> {
  const sentAt = Date.now();
  const exits = processes.map(
    (p) =>
      new Promise<number>((resolve) => {
        if (p.child.exitCode !== null || p.child.signalCode !== null) {
          resolve(0);
          return;
        }
        p.child.once('exit', () => resolve(Date.now() - sentAt));
      }),
  );
  for (const p of processes) {
    p.child.kill('SIGTERM');
  }
  const timer = setTimeout(() => processes.forEach((p) => p.child.kill('SIGKILL')), giveUpMs);
  try {
    return await Promise.all(exits);
  } finally {
    clearTimeout(timer);
  }
}

describe('runtime: Redis outages, logs and shutdown', () => {
  let redis: PrivateRedis;
  let stack: Stack;

  beforeAll(async () => {
    redis = await PrivateRedis.start({ password: PASSWORD });
    stack = await Stack.start('abuse-runtime', {
      env: {
        REDIS_URL: redis.url,
        AQUEDUCT_SHUTDOWN_GRACE_MS: String(GRACE_MS),
        AQUEDUCT_HEARTBEAT_MS: '500',
        // Every line counts here, the info ones included.
        LOG_LEVEL: 'info',
        WORKER_METRICS_PORT: '0',
      },
    });
  });

  afterAll(async () => {
    await stack?.stop();
    await redis?.stop();
  });

  const processes = () => [
    { name: 'gateway', handle: stack.gateway },
    { name: 'worker', handle: stack.workers[0] as ProcessHandle },
  ];

  it(
    'an outage is logged once per state change, as JSON, without the password',
    async () => {
      const before = processes().map((p) => p.handle.output().length);
      await redis.stop();
      await new Promise((r) => setTimeout(r, OUTAGE_MS));
      const during = processes().map((p, i) => linesOf(p.handle.output().slice(before[i])));

      await redis.restart();
      await stack.waitReady(20_000);
      const after = processes().map((p, i) => linesOf(p.handle.output().slice(before[i])));

      for (const [i, p] of processes().entries()) {
        const lines = during[i] as string[];
        const sample = lines.slice(0, 12).join('\n');
        expect(
          lines.length,
          `${p.name} wrote ${lines.length} lines in a ${OUTAGE_MS} ms outage:\n${sample}`,
        ).toBeLessThanOrEqual(MAX_OUTAGE_LINES);
        // The outage is reported, not hidden.
        expect(
          lines.some((l) => l.includes('"redis_state":"lost"')),
          `${p.name} says Redis was lost:\n${sample}`,
        ).toBe(true);
        const all = after[i] as string[];
        expect(
          all.filter((l) => !parsesAsJson(l)),
          `${p.name}: lines that are not JSON`,
        ).toEqual([]);
        expect(
          all.some((l) => l.includes('"redis_state":"back"')),
          `${p.name} says Redis is back`,
        ).toBe(true);
        expect(p.handle.output(), `${p.name} never logs the Redis password`).not.toContain(PASSWORD);
      }
    },
    OUTAGE_MS + 40_000,
  );

  it(
    'SIGTERM after a long outage: the gateway and the worker exit within the grace period',
    async () => {
      await redis.stop();
      // Long enough for the reconnect backoff to reach its ceiling and commands to queue up.
      await new Promise((r) => setTimeout(r, 5_000));
      const took = await terminateAll(
        processes().map((p) => p.handle),
        GRACE_MS + 10_000,
      );
      for (const [i, p] of processes().entries()) {
        expect(
          took[i],
          `${p.name} exited ${took[i]} ms after SIGTERM:\n${p.handle.output().slice(-3_000)}`,
        ).toBeLessThan(GRACE_MS + EXIT_MARGIN_MS);
        expect(p.handle.child.signalCode, `${p.name} was not SIGKILLed`).not.toBe('SIGKILL');
        expect(p.handle.output()).not.toContain(PASSWORD);
      }
    },
    GRACE_MS + 30_000,
  );
});
