import { createHash } from 'node:crypto';
import type { FinishReason, Logprobs, Usage } from '@app/common';
import type { SimParams } from './simulator-params';

/**
 * What the simulator "generates", computed up front so that a streamed and a non-stream
 * answer to the same request are the same text by construction: the stream just paces
 * the steps out, the non-stream answer joins them.
 */

/** One token's logprob entry; `null`s mark the first echoed prompt token, as OpenAI does. */
interface TokenLogprob {
  token: string;
  logprob: number | null;
  top: Record<string, number> | null;
  offset: number;
}

/** What one choice emits at one step (a stream chunk). */
export interface SimStep {
  text: string;
  logprobs: TokenLogprob[];
}

export interface ChoicePlan {
  index: number;
  /** At least one step; the last one carries `finish`. */
  steps: SimStep[];
  finish: FinishReason;
}

export interface CompletionPlan {
  choices: ChoicePlan[];
  usage: Usage;
  /** Steps of the longest choice: what the timing is based on. */
  steps: number;
  /** Whether choices carry a logprobs object. */
  logprobs: boolean;
}

const VOCABULARY = (
  'the river flows under stone arches and water carries light through ancient cities where engineers ' +
  'measured every gradient with care a channel of brick holds its course for miles across valleys towards ' +
  'fountains baths gardens in quiet morning air while tokens stream from workers to gateways over queues ' +
  'as clients wait patiently answers that arrive one word at time slowly then all once'
).split(' ');
const MIN_NATURAL_TOKENS = 8;
const MAX_NATURAL_TOKENS = 64;

export function planCompletion(upstreamModel: string, p: SimParams): CompletionPlan {
  const choices: ChoicePlan[] = [];
  let promptTokens = 0;
  let completionTokens = 0;
  p.prompts.forEach((prompt, promptIdx) => {
    const words = prompt.split(/\s+/).filter((w) => w !== '');
    promptTokens += words.length; // once per prompt, however many choices it has
    for (let c = 0; c < p.n; c++) {
      const seedText = JSON.stringify([upstreamModel, prompt, c, p.seed]);
      const natural = upstreamModel === 'echo' ? words.map((w) => ` ${w}`) : randomTokens(prng(`${seedText}:text`));
      const generated = applyLimits(natural, p.maxTokens, p.stop);
      completionTokens += generated.count;
      const index = promptIdx * p.n + c;
      const lp = p.logprobs === null ? null : { top: p.logprobs, rng: prng(`${seedText}:logprobs`) };
      choices.push({ index, steps: toSteps(p.echo ? prompt : '', generated.visible, lp), finish: generated.finish });
    }
  });
  return {
    choices,
    usage: {
      prompt_tokens: promptTokens,
      completion_tokens: completionTokens,
      total_tokens: promptTokens + completionTokens,
    },
    steps: Math.max(...choices.map((c) => c.steps.length)),
    logprobs: p.logprobs !== null,
  };
}

/** The non-stream form of a choice's steps. */
export function joinSteps(steps: SimStep[]): SimStep {
  return { text: steps.map((s) => s.text).join(''), logprobs: steps.flatMap((s) => s.logprobs) };
}

export function toLogprobs(entries: TokenLogprob[]): Logprobs {
  return {
    tokens: entries.map((e) => e.token),
    token_logprobs: entries.map((e) => e.logprob),
    top_logprobs: entries.map((e) => e.top),
    text_offset: entries.map((e) => e.offset),
  };
}

function randomTokens(rng: () => number): string[] {
  const length = MIN_NATURAL_TOKENS + Math.floor(rng() * (MAX_NATURAL_TOKENS - MIN_NATURAL_TOKENS + 1));
  return Array.from({ length }, () => ` ${pick(rng)}`);
}

interface Generated {
  /** Per generated token, the part the client sees (a stop sequence and what follows are cut). */
  visible: string[];
  /** Tokens generated, including those that spelled out a stop sequence. */
  count: number;
  finish: FinishReason;
}

/**
 * Cuts the natural completion at max_tokens, then at the first stop sequence to complete,
 * checked after every token as an engine does (a stop may span several tokens).
 */
function applyLimits(natural: string[], maxTokens: number, stops: string[]): Generated {
  const tokens = natural.slice(0, maxTokens);
  let text = '';
  for (let i = 0; i < tokens.length; i++) {
    const before = text.length;
    text += tokens[i];
    const cut = firstStop(text, before, stops);
    if (cut !== undefined) {
      return { visible: clip(tokens.slice(0, i + 1), cut), count: i + 1, finish: 'stop' };
    }
  }
  return { visible: tokens, count: tokens.length, finish: tokens.length < natural.length ? 'length' : 'stop' };
}

/** Where the earliest stop sequence that ends in the text added after `before` starts. */
function firstStop(text: string, before: number, stops: string[]): number | undefined {
  let cut: number | undefined;
  for (const stop of stops) {
    const at = text.indexOf(stop, Math.max(0, before - stop.length + 1));
    if (at !== -1 && (cut === undefined || at < cut)) {
      cut = at;
    }
  }
  return cut;
}

/** Keeps each token's characters that lie before `end` in the joined text. */
function clip(tokens: string[], end: number): string[] {
  let start = 0;
  return tokens.map((t) => {
    const kept = t.slice(0, Math.max(0, end - start));
    start += t.length;
    return kept;
  });
}

function toSteps(echo: string, visible: string[], lp: { top: number; rng: () => number } | null): SimStep[] {
  const steps: SimStep[] =
    visible.length === 0 ? [{ text: '', logprobs: [] }] : visible.map((text) => ({ text, logprobs: [] }));
  const first = steps[0] as SimStep;
  first.text = echo + first.text;
  if (lp === null) {
    return steps;
  }
  // Offsets count from the start of the choice's text, echoed prompt included.
  let offset = 0;
  const entry = (token: string, scored: boolean): TokenLogprob => {
    const e = scored ? scoredEntry(token, offset, lp.top, lp.rng) : { token, logprob: null, top: null, offset };
    offset += token.length;
    return e;
  };
  // The echoed prompt, split so that its pieces join back to it exactly.
  (echo.match(/\s*\S+|\s+/g) ?? []).forEach((piece, i) => first.logprobs.push(entry(piece, i > 0)));
  visible.forEach((token, i) => {
    if (token !== '') {
      (steps[i] as SimStep).logprobs.push(entry(token, true));
    }
  });
  return steps;
}

/** The sampled token plus `top` other vocabulary words, all with deterministic fake logprobs. */
function scoredEntry(token: string, offset: number, top: number, rng: () => number): TokenLogprob {
  const logprob = round(-rng() * 2);
  const alternatives: Record<string, number> = { [token]: logprob };
  let next = logprob;
  for (let tries = 0; Object.keys(alternatives).length <= top && tries < 4 * top; tries++) {
    const word = ` ${pick(rng)}`;
    if (!(word in alternatives)) {
      next = round(next - 0.1 - rng());
      alternatives[word] = next;
    }
  }
  return { token, logprob, top: alternatives, offset };
}

function round(x: number): number {
  return Math.round(x * 1e4) / 1e4;
}

function pick(rng: () => number): string {
  return VOCABULARY[Math.floor(rng() * VOCABULARY.length)] ?? 'the';
}

/** sfc32 seeded from sha256(seed): small, fast, and the same on every platform. */
function prng(seed: string): () => number {
  const digest = createHash('sha256').update(seed).digest();
  let a = digest.readUInt32LE(0);
  let b = digest.readUInt32LE(4);
  let c = digest.readUInt32LE(8);
  let d = digest.readUInt32LE(12);
  return () => {
    const t = (((a + b) | 0) + d) | 0;
    d = (d + 1) | 0;
    a = b ^ (b >>> 9);
    b = (c + (c << 3)) | 0;
    c = (c << 21) | (c >>> 11);
    c = (c + t) | 0;
    return (t >>> 0) / 4294967296;
  };
}
