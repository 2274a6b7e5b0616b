import type {
  ChatChoice,
  ChatChunkChoice,
  ChatDelta,
  ChatFinishReason,
  ChatLogprobs,
  ChatMessage,
  ChatTokenLogprob,
  Usage,
} from '@app/common';
import type { BackendRequest, BackendResult, StreamEvent } from './llm-backend';
import { type ChatSimParams, parseChatParams, type SimTool } from './simulator-chat-params';
import type { SimulatorClock } from './simulator-clock';
import { ChoiceGenerator, type TokenLogprob } from './simulator-text';
import { simulatedToolCall } from './simulator-tools';

/**
 * The simulator's chat completions. Text answers come from the completion generator (the
 * last user message is its prompt: echoed by `simulator/echo`, seeding the lorem words
 * otherwise), so stop, max_tokens, n, seed and logprobs behave exactly as for completions.
 * A `tool_choice` that forces a function makes every choice one call to it instead.
 * Deterministic, and a stream carries the same answer as the non-stream response.
 * usage.prompt_tokens counts the whitespace-separated words of every message's text
 * content (string contents and text parts; see parseChatParams); completion_tokens the
 * tokens generated (for a tool call: its arguments fragments).
 */

/** One choice as a sequence of deltas, produced on demand. */
interface ChatRun {
  readonly index: number;
  /** The first delta, which opens the choice: role, and an empty content or the tool call's header. */
  readonly head: ChatDelta;
  /** The next content (or arguments) piece; undefined after the last. Every run has at least one. */
  next(): ChatPiece | undefined;
  /** True once the last piece has been handed out. */
  readonly exhausted: boolean;
  /** Valid once exhausted. */
  readonly finish: ChatFinishReason;
  /** Completion tokens generated (valid once exhausted). */
  readonly tokens: number;
  /** The whole message, given the joined text of every piece. */
  message(text: string): ChatMessage;
}

interface ChatPiece {
  text: string;
  delta: ChatDelta;
  logprobs: ChatTokenLogprob[];
}

export async function simulateChat(clock: SimulatorClock, req: BackendRequest): Promise<BackendResult> {
  const start = clock.now();
  const { p, runs } = begin(req);
  const pace = clock.pacer(req.signal);
  const choices: ChatChoice[] = [];
  let steps = 0;
  for (const run of runs) {
    const texts: string[] = [];
    const entries: ChatTokenLogprob[] = [];
    let n = 0;
    for (let piece = run.next(); piece !== undefined; piece = run.next()) {
      n += 1;
      texts.push(piece.text);
      for (const e of piece.logprobs) {
        entries.push(e);
      }
      await pace.work(1 + piece.logprobs.length);
    }
    steps = Math.max(steps, n);
    choices.push({
      index: run.index,
      message: run.message(texts.join('')),
      logprobs: p.topLogprobs !== null && p.tool === null ? { content: entries } : null,
      finish_reason: run.finish,
    });
  }
  const { ttftMs, itlMs } = req.deployment;
  // The same total time the stream would take, delivered at once.
  await clock.waitUntil(req, start + ttftMs + itlMs * (steps - 1));
  return { output: choices, usage: usage(p, runs) };
}

/**
 * Per choice: the opening delta, the pieces (choices interleaved one per chunk, paced by
 * ttft and itl like the completion stream), a closing `delta: {}` with the finish_reason;
 * then usage.
 */
export async function* streamChat(clock: SimulatorClock, req: BackendRequest): AsyncGenerator<StreamEvent> {
  const start = clock.now();
  const { p, runs } = begin(req);
  const pace = clock.pacer(req.signal);
  const { ttftMs, itlMs } = req.deployment;
  const withLogprobs = p.topLogprobs !== null && p.tool === null;
  let active = runs;
  for (let step = 0; active.length > 0; step++) {
    // Absolute targets: per-token sleeps would add up their timer lateness.
    await clock.waitUntil(req, start + ttftMs + itlMs * step);
    const still: ChatRun[] = [];
    for (const run of active) {
      if (step === 0) {
        yield chunk(run.index, run.head, null, null);
      }
      const piece = run.next();
      // Empty pieces (no content at all, or a token eaten by a stop sequence) would only be noise.
      if (piece !== undefined && (piece.text !== '' || piece.logprobs.length > 0)) {
        const logprobs = withLogprobs ? { content: piece.logprobs } : null;
        yield chunk(run.index, piece.delta, logprobs, null);
      }
      if (run.exhausted) {
        yield chunk(run.index, {}, null, run.finish);
      } else {
        still.push(run);
      }
      req.signal.throwIfAborted();
      await pace.work(1 + (piece?.logprobs.length ?? 0));
    }
    active = still;
  }
  yield { type: 'usage', usage: usage(p, runs) };
}

function begin(req: BackendRequest): { p: ChatSimParams; runs: ChatRun[] } {
  req.signal.throwIfAborted();
  const p = parseChatParams(req.params);
  const model = req.deployment.upstreamModel;
  const runs: ChatRun[] = [];
  // Split once, shared by the n choices (the message may be long).
  const words = (p.text.prompts[0] ?? '').split(/\s+/).filter((w) => w !== '');
  // At most 128 choices; each generates its text only as it is asked for.
  for (let c = 0; c < p.text.n; c++) {
    runs.push(p.tool === null ? textRun(model, p, words, c) : toolRun(model, p, p.tool, c));
  }
  return { p, runs };
}

function textRun(model: string, p: ChatSimParams, words: string[], c: number): ChatRun {
  const prompt = p.text.prompts[0] ?? '';
  const gen = new ChoiceGenerator(model, p.text, prompt, words, 0, c, true);
  const top = p.topLogprobs ?? 0;
  return {
    index: c,
    head: { role: 'assistant', content: '' },
    next() {
      const step = gen.next();
      if (step === undefined) {
        return undefined;
      }
      const logprobs = p.topLogprobs === null ? [] : step.logprobs.map((e) => chatLogprob(e, top));
      return { text: step.text, delta: { content: step.text }, logprobs };
    },
    get exhausted() {
      return gen.exhausted;
    },
    get finish() {
      return gen.finish;
    },
    get tokens() {
      return gen.count;
    },
    message: (text) => ({ role: 'assistant', content: text, refusal: null }),
  };
}

function toolRun(model: string, p: ChatSimParams, tool: SimTool, c: number): ChatRun {
  const call = simulatedToolCall(model, tool, c, p.text.seed, p.conversation);
  let i = 0;
  return {
    index: c,
    head: {
      role: 'assistant',
      content: null,
      tool_calls: [{ index: 0, id: call.id, type: 'function', function: { name: tool.name, arguments: '' } }],
    },
    next() {
      const fragment = call.fragments[i];
      if (fragment === undefined) {
        return undefined;
      }
      i += 1;
      return { text: fragment, delta: { tool_calls: [{ index: 0, function: { arguments: fragment } }] }, logprobs: [] };
    },
    get exhausted() {
      return i >= call.fragments.length;
    },
    finish: 'tool_calls',
    tokens: call.fragments.length,
    message: (text) => ({
      role: 'assistant',
      content: null,
      refusal: null,
      tool_calls: [{ id: call.id, type: 'function', function: { name: tool.name, arguments: text } }],
    }),
  };
}

/** The generator's entry in chat's shape; its alternatives start with the sampled token, as OpenAI's do. */
function chatLogprob(e: TokenLogprob, top: number): ChatTokenLogprob {
  const alternatives = Object.entries(e.top ?? {}).slice(0, top);
  return {
    token: e.token,
    logprob: e.logprob ?? 0,
    bytes: utf8(e.token),
    top_logprobs: alternatives.map(([token, logprob]) => ({ token, logprob, bytes: utf8(token) })),
  };
}

function utf8(text: string): number[] {
  return [...Buffer.from(text, 'utf8')];
}

function chunk(
  index: number,
  delta: ChatDelta,
  logprobs: ChatLogprobs | null,
  finish: ChatFinishReason | null,
): StreamEvent {
  const choice: ChatChunkChoice = { index, delta, logprobs, finish_reason: finish };
  return { type: 'chunk', choices: [choice] };
}

function usage(p: ChatSimParams, runs: ChatRun[]): Usage {
  const completion = runs.reduce((sum, r) => sum + r.tokens, 0);
  return { prompt_tokens: p.promptTokens, completion_tokens: completion, total_tokens: p.promptTokens + completion };
}
