import type { ChoiceDelta } from '@app/common';
import type { BackendRequest, BackendResult, LlmBackend, StreamEvent } from './llm-backend';
import { parseSimParams } from './simulator-params';
import {
  type ChoiceGenerator,
  type CompletionRun,
  type SimStep,
  startCompletion,
  toLogprobs,
  type TokenLogprob,
} from './simulator-text';
import { upstreamTimeout } from './upstream-errors';

export interface SimulatorBackendOptions {
  /** Epoch ms; injectable so that tests control time. */
  now?: () => number;
  /** Resolves after `ms`, or rejects with `signal.reason` as soon as the signal aborts. */
  sleep?: (ms: number, signal: AbortSignal) => Promise<void>;
  /**
   * Units of work (tokens, logprob entries, chunks) between two yields to the event loop.
   * A request for a huge answer with no inter-token latency would otherwise run in one
   * go and starve every other job of the worker (and its lock renewals and heartbeats).
   */
  yieldEvery?: number;
}

/** About 0.5-2 ms of work per slice on a laptop core: other jobs wait at most that long. */
const DEFAULT_YIELD_EVERY = 256;

/**
 * A model without a model, for demos and load tests. Deterministic: the same request gets
 * the same text, streamed or not. `simulator/echo` repeats the prompt's words; any other
 * name produces seeded pseudo-random words. The deployment's `ttftMs` and `itlMs` pace the
 * output like a real server (time to first token, then inter-token latency). The text is
 * generated lazily and in slices that yield to the event loop, so no request size can
 * block the worker or build its whole answer before the first chunk.
 */
export class SimulatorBackend implements LlmBackend {
  private readonly now: () => number;
  private readonly sleep: (ms: number, signal: AbortSignal) => Promise<void>;
  private readonly yieldEvery: number;

  constructor(options: SimulatorBackendOptions = {}) {
    this.now = options.now ?? Date.now;
    this.sleep = options.sleep ?? abortableSleep;
    this.yieldEvery = options.yieldEvery ?? DEFAULT_YIELD_EVERY;
  }

  async complete(req: BackendRequest): Promise<BackendResult> {
    const start = this.now();
    const run = this.begin(req);
    const pace = new Pacer(this.yieldEvery, req.signal);
    const choices: ChoiceDelta[] = [];
    let steps = 0;
    for (const gen of run.choices()) {
      const texts: string[] = [];
      const entries: TokenLogprob[] = [];
      let n = 0;
      for (let s = gen.next(); s !== undefined; s = gen.next()) {
        n += 1;
        texts.push(s.text);
        for (const e of s.logprobs) {
          entries.push(e);
        }
        await pace.work(1 + s.logprobs.length);
      }
      steps = Math.max(steps, n);
      choices.push({
        index: gen.index,
        text: texts.join(''),
        logprobs: run.logprobs ? toLogprobs(entries) : null,
        finish_reason: gen.finish,
      });
    }
    const { ttftMs, itlMs } = req.deployment;
    // The same total time the stream would take, delivered at once.
    await this.waitUntil(req, start + ttftMs + itlMs * (steps - 1));
    return { output: choices, usage: run.usage() };
  }

  async *stream(req: BackendRequest): AsyncGenerator<StreamEvent> {
    const start = this.now();
    const run = this.begin(req);
    const pace = new Pacer(this.yieldEvery, req.signal);
    const { ttftMs, itlMs } = req.deployment;
    let active: ChoiceGenerator[] = [];
    for (const gen of run.choices()) {
      active.push(gen);
      await pace.work(1);
    }
    for (let step = 0; active.length > 0; step++) {
      // Absolute targets: per-token sleeps would add up their timer lateness.
      await this.waitUntil(req, start + ttftMs + itlMs * step);
      const still: ChoiceGenerator[] = [];
      // One choice per chunk, interleaved, as vLLM streams several choices.
      for (const gen of active) {
        const current = gen.next();
        if (current === undefined) {
          continue;
        }
        const finish = gen.exhausted ? gen.finish : null;
        yield { type: 'chunk', choices: [choiceDelta(gen.index, current, finish, run.logprobs)] };
        req.signal.throwIfAborted();
        if (finish === null) {
          still.push(gen);
        }
        await pace.work(1 + current.logprobs.length);
      }
      active = still;
    }
    yield { type: 'usage', usage: run.usage() };
  }

  private begin(req: BackendRequest): CompletionRun {
    req.signal.throwIfAborted();
    return startCompletion(req.deployment.upstreamModel, parseSimParams(req.params));
  }

  /** Sleeps until `target` (epoch ms); fails with 504 at the deadline if that comes first. */
  private async waitUntil(req: BackendRequest, target: number): Promise<void> {
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
class Pacer {
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

function choiceDelta(
  index: number,
  step: SimStep,
  finish: ChoiceDelta['finish_reason'],
  logprobs: boolean,
): ChoiceDelta {
  return {
    index,
    text: step.text,
    logprobs: logprobs ? toLogprobs(step.logprobs) : null,
    finish_reason: finish,
  };
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
