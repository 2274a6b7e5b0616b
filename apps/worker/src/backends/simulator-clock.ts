import type { BackendRequest } from './llm-backend';
import { upstreamTimeout } from './upstream-errors';

/**
 * Time and fairness for the simulator's operations: sleeping towards absolute targets
 * with the deadline and the signal honoured, and yielding the event loop during long
 * stretches of synchronous work.
 */

export interface SimulatorClockOptions {
  /** Epoch ms; injectable so that tests control time. */
  now?: () => number;
  /** Resolves after `ms`, or rejects with `signal.reason` as soon as the signal aborts. */
  sleep?: (ms: number, signal: AbortSignal) => Promise<void>;
  /**
   * Units of work (tokens, logprob entries, chunks, vectors) between two yields to the
   * event loop. A request for a huge answer with no inter-token latency would otherwise
   * run in one go and starve every other job of the worker (and its lock renewals and
   * heartbeats).
   */
  yieldEvery?: number;
}

/** About 0.5-2 ms of work per slice on a laptop core: other jobs wait at most that long. */
const DEFAULT_YIELD_EVERY = 256;

export class SimulatorClock {
  readonly now: () => number;
  private readonly sleep: (ms: number, signal: AbortSignal) => Promise<void>;
  private readonly yieldEvery: number;

  constructor(options: SimulatorClockOptions = {}) {
    this.now = options.now ?? Date.now;
    this.sleep = options.sleep ?? abortableSleep;
    this.yieldEvery = options.yieldEvery ?? DEFAULT_YIELD_EVERY;
  }

  /** A fresh work counter for one request. */
  pacer(signal: AbortSignal): Pacer {
    return new Pacer(this.yieldEvery, signal);
  }

  /** Sleeps until `target` (epoch ms); fails with 504 at the deadline if that comes first. */
  async waitUntil(req: BackendRequest, target: number): Promise<void> {
    req.signal.throwIfAborted();
    const now = this.now();
    if (now >= req.deadline) {
      throw upstreamTimeout();
    }
    if (target <= req.deadline) {
      await this.sleep(target - now, req.signal);
      return;
    }
    await this.sleep(req.deadline - now, req.signal);
    throw upstreamTimeout();
  }
}

/**
 * Counts work and yields to the event loop (setImmediate, so timers and I/O run too) once
 * a slice is used up; checks the signal after each yield so that a cancel stops a long
 * generation within one slice.
 */
export class Pacer {
  private done = 0;

  constructor(
    private readonly every: number,
    private readonly signal: AbortSignal,
  ) {}

  async work(units: number): Promise<void> {
    this.done += units;
    if (this.done < this.every) {
      return;
    }
    this.done = 0;
    await new Promise<void>((resolve) => setImmediate(resolve));
    this.signal.throwIfAborted();
  }
}

/** setTimeout that an AbortSignal cancels, leaving no timer or listener behind either way. */
function abortableSleep(ms: number, signal: AbortSignal): Promise<void> {
  if (signal.aborted) {
    return Promise.reject(signal.reason as Error);
  }
  if (ms <= 0) {
    return Promise.resolve();
  }
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal.reason as Error);
    };
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    signal.addEventListener('abort', onAbort, { once: true });
  });
}
