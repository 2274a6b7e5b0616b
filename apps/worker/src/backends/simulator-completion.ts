import type { ChoiceDelta } from '@app/common';
import type { BackendRequest, BackendResult, StreamEvent } from './llm-backend';
import type { SimulatorClock } from './simulator-clock';
import { parseSimParams } from './simulator-params';
import {
  type ChoiceGenerator,
  type CompletionRun,
  type SimStep,
  startCompletion,
  toLogprobs,
  type TokenLogprob,
} from './simulator-text';

/** The simulator's text completions (`/completions`), whole or streamed. */

export async function simulateCompletion(clock: SimulatorClock, req: BackendRequest): Promise<BackendResult> {
  const start = clock.now();
  const run = begin(req);
  const pace = clock.pacer(req.signal);
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
  await clock.waitUntil(req, start + ttftMs + itlMs * (steps - 1));
  return { output: choices, usage: run.usage() };
}

export async function* streamCompletion(clock: SimulatorClock, req: BackendRequest): AsyncGenerator<StreamEvent> {
  const start = clock.now();
  const run = begin(req);
  const pace = clock.pacer(req.signal);
  const { ttftMs, itlMs } = req.deployment;
  let active: ChoiceGenerator[] = [];
  for (const gen of run.choices()) {
    active.push(gen);
    await pace.work(1);
  }
  for (let step = 0; active.length > 0; step++) {
    // Absolute targets: per-token sleeps would add up their timer lateness.
    await clock.waitUntil(req, start + ttftMs + itlMs * step);
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

function begin(req: BackendRequest): CompletionRun {
  req.signal.throwIfAborted();
  return startCompletion(req.deployment.upstreamModel, parseSimParams(req.params));
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
