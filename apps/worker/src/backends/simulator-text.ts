import { createHash } from 'node:crypto';
import type { FinishReason, Logprobs, Usage } from '@app/common';
import type { SimParams } from './simulator-params';

/**
 * What the simulator "generates", produced lazily, one step (stream chunk) at a time, so
 * that a request asking for a huge answer costs memory and CPU only as fast as it is
 * consumed: nothing is built up front. A streamed and a non-stream answer to the same
 * request are the same text by construction: the stream paces the steps out, the
 * non-stream answer joins them.
 */

/** One token's logprob entry; `null`s mark the first echoed prompt token, as OpenAI does. */
export interface TokenLogprob {
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

/** A request's choices, each generated on demand, plus what usage needs. */
export interface CompletionRun {
  /** In index order (`prompt_idx * n + choice_idx`); each is created when first asked for. */
  choices(): Generator<ChoiceGenerator>;
  /** Whether choices carry a logprobs object. */
  logprobs: boolean;
  /** Valid once every choice is exhausted. */
  usage(): Usage;
}

const VOCABULARY = (
  'the river flows under stone arches and water carries light through ancient cities where engineers ' +
  'measured every gradient with care a channel of brick holds its course for miles across valleys towards ' +
  'fountains baths gardens in quiet morning air while tokens stream from workers to gateways over queues ' +
  'as clients wait patiently answers that arrive one word at time slowly then all once'
).split(' ');
const MIN_NATURAL_TOKENS = 8;
const MAX_NATURAL_TOKENS = 64;

export function startCompletion(upstreamModel: string, p: SimParams): CompletionRun {
  // Words are split once per prompt (the prompt token count needs them anyway) and shared
  // by that prompt's n choices.
  const words = p.prompts.map((prompt) => prompt.split(/\s+/).filter((w) => w !== ''));
  const promptTokens = words.reduce((sum, w) => sum + w.length, 0); // once per prompt, however many choices
  const created: ChoiceGenerator[] = [];
  return {
    *choices() {
      for (let promptIdx = 0; promptIdx < p.prompts.length; promptIdx++) {
        for (let c = 0; c < p.n; c++) {
          const gen = new ChoiceGenerator(
            upstreamModel,
            p,
            p.prompts[promptIdx] ?? '',
            words[promptIdx] ?? [],
            promptIdx,
            c,
          );
          created.push(gen);
          yield gen;
        }
      }
    },
    logprobs: p.logprobs !== null,
    usage() {
      const completionTokens = created.reduce((sum, g) => sum + g.count, 0);
      return {
        prompt_tokens: promptTokens,
        completion_tokens: completionTokens,
        total_tokens: promptTokens + completionTokens,
      };
    },
  };
}

/**
 * One choice's steps, in order. The natural completion is cut at max_tokens, then at the
 * first stop sequence to complete, checked after every token as an engine does. A stop may
 * span several tokens and so shorten tokens already generated; a token is therefore handed
 * out only once no later stop can reach back into it (a look-ahead of at most the longest
 * stop's length), which keeps the output identical to cutting the whole text at once.
 */
export class ChoiceGenerator {
  readonly index: number;
  /** Tokens generated, including those that spelled out a stop sequence (valid once exhausted). */
  count = 0;
  /** Valid once exhausted. */
  finish: FinishReason = 'stop';

  private readonly natural: () => string;
  private readonly naturalLength: number;
  private readonly limit: number;
  private readonly stops: string[];
  private readonly maxStop: number;
  /** Generated tokens not handed out yet, with their start offsets in the joined text. */
  private readonly pending: { text: string; start: number }[] = [];
  private pendingHead = 0;
  /** Length of the joined (uncut) text generated so far. */
  private total = 0;
  /** The last `maxStop - 1` characters of that text: all a new stop can start in. */
  private tail = '';
  private done = false;
  private emitted = 0;
  private readonly echo: string;
  private readonly lp: { top: number; rng: () => number } | null;
  private offset = 0;

  /**
   * `chat`: the text is a message's content, so its first word has no leading space (a
   * completion continues its prompt, hence the space there). The words are the same.
   */
  constructor(
    upstreamModel: string,
    p: SimParams,
    prompt: string,
    words: string[],
    promptIdx: number,
    c: number,
    chat = false,
  ) {
    this.index = promptIdx * p.n + c;
    const seedText = JSON.stringify([upstreamModel, prompt, c, p.seed]);
    let word: () => string;
    if (upstreamModel === 'echo') {
      let i = 0;
      word = () => words[i++] ?? '';
      this.naturalLength = words.length;
    } else {
      const rng = prng(`${seedText}:text`);
      this.naturalLength = MIN_NATURAL_TOKENS + Math.floor(rng() * (MAX_NATURAL_TOKENS - MIN_NATURAL_TOKENS + 1));
      word = () => pick(rng);
    }
    let first = chat;
    this.natural = () => {
      const w = word();
      if (first) {
        first = false;
        return w;
      }
      return ` ${w}`;
    };
    this.limit = Math.min(p.maxTokens, this.naturalLength);
    this.stops = p.stop;
    this.maxStop = p.stop.reduce((m, s) => Math.max(m, s.length), 0);
    this.echo = p.echo ? prompt : '';
    this.lp = p.logprobs === null ? null : { top: p.logprobs, rng: prng(`${seedText}:logprobs`) };
    if (this.limit === 0) {
      this.finish = this.naturalLength > 0 ? 'length' : 'stop';
      this.done = true;
    }
  }

  /** True once the last step has been handed out. */
  get exhausted(): boolean {
    return this.done && this.pendingHead === this.pending.length && this.emitted > 0;
  }

  /** The next step, or undefined after the last one. Every choice has at least one step. */
  next(): SimStep | undefined {
    while (!this.done && (this.pendingHead === this.pending.length || !this.safe())) {
      this.generate();
    }
    const token = this.pendingHead < this.pending.length ? this.pending[this.pendingHead++] : undefined;
    if (this.pendingHead === this.pending.length) {
      this.pending.length = 0;
      this.pendingHead = 0;
    }
    if (token === undefined && this.emitted > 0) {
      return undefined;
    }
    return this.step(token?.text ?? '');
  }

  /** Whether the oldest pending token lies wholly before where any later stop could start. */
  private safe(): boolean {
    const first = this.pending[this.pendingHead];
    return first !== undefined && first.start + first.text.length <= this.total - this.maxStop + 1;
  }

  private generate(): void {
    const token = this.natural();
    const before = this.total;
    const tailStart = before - this.tail.length;
    const text = this.tail + token;
    let cut: number | undefined;
    for (const stop of this.stops) {
      const at = text.indexOf(stop, Math.max(0, before - stop.length + 1 - tailStart));
      if (at !== -1 && (cut === undefined || at + tailStart < cut)) {
        cut = at + tailStart;
      }
    }
    this.pending.push({ text: token, start: before });
    this.total += token.length;
    this.count += 1;
    if (cut !== undefined) {
      // Keeps each pending token's characters that lie before the cut.
      for (let i = this.pendingHead; i < this.pending.length; i++) {
        const t = this.pending[i] as { text: string; start: number };
        t.text = t.text.slice(0, Math.max(0, cut - t.start));
      }
      this.finish = 'stop';
      this.done = true;
      return;
    }
    this.tail = this.maxStop > 1 ? text.slice(-(this.maxStop - 1)) : '';
    if (this.count === this.limit) {
      this.finish = this.limit < this.naturalLength ? 'length' : 'stop';
      this.done = true;
    }
  }

  private step(token: string): SimStep {
    const first = this.emitted === 0;
    this.emitted += 1;
    const step: SimStep = { text: first ? this.echo + token : token, logprobs: [] };
    const lp = this.lp;
    if (lp === null) {
      return step;
    }
    // Offsets count from the start of the choice's text, echoed prompt included.
    const entry = (piece: string, scored: boolean): TokenLogprob => {
      const e = scored
        ? scoredEntry(piece, this.offset, lp.top, lp.rng)
        : { token: piece, logprob: null, top: null, offset: this.offset };
      this.offset += piece.length;
      return e;
    };
    if (first) {
      // The echoed prompt, split so that its pieces join back to it exactly.
      (this.echo.match(/\s*\S+|\s+/g) ?? []).forEach((piece, i) => step.logprobs.push(entry(piece, i > 0)));
    }
    if (token !== '') {
      step.logprobs.push(entry(token, true));
    }
    return step;
  }
}

export function toLogprobs(entries: TokenLogprob[]): Logprobs {
  return {
    tokens: entries.map((e) => e.token),
    token_logprobs: entries.map((e) => e.logprob),
    top_logprobs: entries.map((e) => e.top),
    text_offset: entries.map((e) => e.offset),
  };
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

export function pick(rng: () => number): string {
  return VOCABULARY[Math.floor(rng() * VOCABULARY.length)] ?? 'the';
}

/** sfc32 seeded from sha256(seed): small, fast, and the same on every platform. */
export function prng(seed: string): () => number {
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
