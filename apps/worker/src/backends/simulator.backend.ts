import type { ChoiceDelta } from '@app/common';
import type { BackendRequest, CompletionResult, LlmBackend, StreamEvent } from './llm-backend';
import { parseSimParams } from './simulator-params';
import {
  joinSteps,
  planCompletion,
  toLogprobs,
  type ChoicePlan,
  type CompletionPlan,
  type SimStep,
} from './simulator-text';
import { upstreamTimeout } from './upstream-errors';

export interface SimulatorBackendOptions {
  /** Epoch ms; injectable so that tests control time. */
  now?: () => number;
  /** Resolves after `ms`, or rejects with `signal.reason` as soon as the signal aborts. */
  sleep?: (ms: number, signal: AbortSignal) => Promise<void>;
}

/**
 * A model without a model, for demos and load tests. Deterministic: the same request gets
 * the same text, streamed or not. `simulator/echo` repeats the prompt's words; any other
 * name produces seeded pseudo-random words. The deployment's `ttftMs` and `itlMs` pace the
 * output like a real server (time to first token, then inter-token latency).
 */
export class SimulatorBackend implements LlmBackend {
  private readonly now: () => number;
  private readonly sleep: (ms: number, signal: AbortSignal) => Promise<void>;

  constructor(options: SimulatorBackendOptions = {}) {
    this.now = options.now ?? Date.now;
    this.sleep = options.sleep ?? abortableSleep;
  }

  async complete(req: BackendRequest): Promise<CompletionResult> {
    const start = this.now();
    const plan = this.plan(req);
    const { ttftMs, itlMs } = req.deployment;
    // The same total time the stream would take, delivered at once.
    await this.waitUntil(req, start + ttftMs + itlMs * (plan.steps - 1));
    return {
      choices: plan.choices.map((c) => choiceDelta(c, joinSteps(c.steps), c.finish, plan.logprobs)),
      usage: plan.usage,
    };
  }

  async *stream(req: BackendRequest): AsyncGenerator<StreamEvent> {
    const start = this.now();
    const plan = this.plan(req);
    const { ttftMs, itlMs } = req.deployment;
    for (let step = 0; step < plan.steps; step++) {
      // Absolute targets: per-token sleeps would add up their timer lateness.
      await this.waitUntil(req, start + ttftMs + itlMs * step);
      // One choice per chunk, interleaved, as vLLM streams several choices.
      for (const choice of plan.choices) {
        const current = choice.steps[step];
        if (current !== undefined) {
          const finish = step === choice.steps.length - 1 ? choice.finish : null;
          yield { type: 'chunk', choices: [choiceDelta(choice, current, finish, plan.logprobs)] };
          req.signal.throwIfAborted();
        }
      }
    }
    yield { type: 'usage', usage: plan.usage };
  }

  private plan(req: BackendRequest): CompletionPlan {
    req.signal.throwIfAborted();
    return planCompletion(req.deployment.upstreamModel, parseSimParams(req.params));
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

function choiceDelta(
  choice: ChoicePlan,
  step: SimStep,
  finish: ChoiceDelta['finish_reason'],
  logprobs: boolean,
): ChoiceDelta {
  return {
    index: choice.index,
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
