import { describe, expect, it } from 'vitest';
import type { Deployment } from '@app/common';
import type { BackendRequest } from './llm-backend';
import { SimulatorBackend } from './simulator.backend';

/**
 * The simulator must never hold the worker's event loop: however large the request, it
 * generates lazily and yields between slices of work, and a cancel stops it promptly.
 */

const deployment: Deployment = {
  id: 'sim#0',
  modelName: 'sim',
  provider: 'simulator',
  upstreamModel: 'echo',
  ttftMs: 0,
  itlMs: 0,
  extraBodyAllowed: [],
};

const prompt = Array.from({ length: 2_048 }, (_, i) => `w${i}`).join(' ');
/** 128 choices × 2048 tokens (with logprobs: 5 alternatives each): far more than a few ms of work. */
const big = { prompt, n: 128, max_tokens: 4_096, logprobs: 5 };

function request(params: Record<string, unknown>, signal = new AbortController().signal): BackendRequest {
  return { op: 'completion', deployment, params, signal, deadline: Date.now() + 120_000 };
}

const MAX_GAP_MS = 500;

/** Largest gap between ticks of a 2 ms interval while `work` runs: how long the loop was blocked. */
async function maxBlockMs<T>(work: () => Promise<T>): Promise<{ gap: number; result: T }> {
  let last = performance.now();
  let gap = 0;
  const timer = setInterval(() => {
    const now = performance.now();
    gap = Math.max(gap, now - last);
    last = now;
  }, 2);
  try {
    const result = await work();
    // The last stretch too: a block that ends with the work is seen by no tick.
    return { gap: Math.max(gap, performance.now() - last), result };
  } finally {
    clearInterval(timer);
  }
}

describe('SimulatorBackend: lazy and fair', () => {
  it('streams a huge request without blocking the event loop, first chunk at once', async () => {
    const sim = new SimulatorBackend();
    let first = -1;
    let chunks = 0;
    const started = performance.now();
    const { gap } = await maxBlockMs(async () => {
      for await (const ev of sim.stream(request(big))) {
        if (ev.type === 'chunk') {
          chunks += 1;
          if (first < 0) {
            first = performance.now() - started;
          }
        }
      }
    });
    expect(chunks).toBe(128 * 2_048);
    expect(first, 'nothing is planned up front').toBeLessThan(100);
    // One slice is well under a millisecond; the bound leaves room for GC pauses and a
    // CI core shared with other processes (the synchronous simulator blocked for seconds).
    expect(gap).toBeLessThan(MAX_GAP_MS);
  }, 60_000);

  it('builds a huge non-stream answer in slices too', async () => {
    const sim = new SimulatorBackend();
    const { gap, result } = await maxBlockMs(() => sim.complete(request({ ...big, logprobs: 1 })));
    expect(result.output).toHaveLength(128);
    expect(result.usage?.completion_tokens).toBe(128 * 2_048);
    expect(gap).toBeLessThan(MAX_GAP_MS);
  }, 60_000);

  it.each([true, false])('stops within a slice when cancelled mid-generation (stream: %s)', async (stream) => {
    const sim = new SimulatorBackend();
    const ctl = new AbortController();
    const reason = new Error('cancelled');
    setTimeout(() => ctl.abort(reason), 30);
    const started = performance.now();
    const run = stream
      ? (async () => {
          for await (const _ of sim.stream(request(big, ctl.signal))) {
            // consume
          }
        })()
      : sim.complete(request(big, ctl.signal));
    await expect(run).rejects.toBe(reason);
    expect(performance.now() - started).toBeLessThan(300);
  });
});
