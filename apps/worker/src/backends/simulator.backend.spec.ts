import { describe, expect, it } from 'vitest';
import type { ChoiceDelta, Deployment, Usage } from '@app/common';
import { BackendError } from './backend.error';
import type { BackendRequest, BackendResult, StreamEvent } from './llm-backend';
import { SimulatorBackend } from './simulator.backend';

function deployment(upstreamModel: string, ttftMs = 0, itlMs = 0): Deployment {
  return { id: 'sim#0', modelName: 'sim', provider: 'simulator', upstreamModel, ttftMs, itlMs, extraBodyAllowed: [] };
}

function request(
  upstreamModel: string,
  params: Record<string, unknown>,
  extra: Partial<Omit<BackendRequest, 'params'>> = {},
): BackendRequest {
  return {
    op: 'completion',
    deployment: deployment(upstreamModel),
    params,
    signal: new AbortController().signal,
    deadline: Date.now() + 60_000,
    ...extra,
  };
}

/** A clock that only moves when the simulator sleeps: timing becomes exact and instant. */
function virtualTime(start = 1_000_000) {
  const state = { now: start, sleeps: [] as number[] };
  const backend = new SimulatorBackend({
    now: () => state.now,
    sleep: (ms, signal) => {
      signal.throwIfAborted();
      state.sleeps.push(ms);
      state.now += Math.max(0, ms);
      return Promise.resolve();
    },
  });
  return { backend, state };
}

async function collect(stream: AsyncIterable<StreamEvent>): Promise<StreamEvent[]> {
  const events: StreamEvent[] = [];
  for await (const e of stream) {
    events.push(e);
  }
  return events;
}

function chunks(events: StreamEvent[]): ChoiceDelta[] {
  return events.flatMap((e) => (e.type === 'chunk' ? (e.choices as ChoiceDelta[]) : []));
}

/** Joins streamed deltas per choice index into whole choices, as a client would. */
function merge(events: StreamEvent[]): Map<number, { text: string; finish: string | null; tokens: string[] }> {
  const out = new Map<number, { text: string; finish: string | null; tokens: string[] }>();
  for (const c of chunks(events)) {
    const m = out.get(c.index) ?? { text: '', finish: null, tokens: [] };
    m.text += c.text;
    m.finish = c.finish_reason ?? m.finish;
    m.tokens.push(...(c.logprobs?.tokens ?? []));
    out.set(c.index, m);
  }
  return out;
}

function usageOf(events: StreamEvent[]): Usage | undefined {
  const last = events.at(-1);
  return last?.type === 'usage' ? last.usage : undefined;
}

const sim = new SimulatorBackend();

/** A completion's result, typed as one: `output` holds text choices. */
type TextResult = Omit<BackendResult, 'output'> & { output: ChoiceDelta[] };

function complete(req: BackendRequest): Promise<TextResult> {
  return sim.complete(req) as Promise<TextResult>;
}

describe('SimulatorBackend: echo model', () => {
  it('emits each prompt word as one token and stops', async () => {
    const res = await complete(request('echo', { prompt: 'hello big  world' }));
    expect(res.output).toEqual([{ index: 0, text: ' hello big world', logprobs: null, finish_reason: 'stop' }]);
    expect(res.usage).toEqual({ prompt_tokens: 3, completion_tokens: 3, total_tokens: 6 });
  });

  it('truncates at max_tokens with finish_reason length', async () => {
    const res = await complete(request('echo', { prompt: 'a b c d', max_tokens: 2 }));
    expect(res.output[0]).toMatchObject({ text: ' a b', finish_reason: 'length' });
    expect(res.usage?.completion_tokens).toBe(2);
  });

  it('streams one token per chunk and ends with usage', async () => {
    const events = await collect(sim.stream(request('echo', { prompt: 'x y z' })));
    expect(chunks(events).map((c) => c.text)).toEqual([' x', ' y', ' z']);
    expect(chunks(events).map((c) => c.finish_reason)).toEqual([null, null, 'stop']);
    expect(usageOf(events)).toEqual({ prompt_tokens: 3, completion_tokens: 3, total_tokens: 6 });
  });

  it('reads token-id prompts as t<k> words, int[] being one prompt and int[][] a batch', async () => {
    const one = await complete(request('echo', { prompt: [1, 2, 3] }));
    expect(one.output).toHaveLength(1);
    expect(one.output[0]?.text).toBe(' t1 t2 t3');
    expect(one.usage?.prompt_tokens).toBe(3);
    const batch = await complete(request('echo', { prompt: [[7], [8, 9]] }));
    expect(batch.output.map((c) => c.text)).toEqual([' t7', ' t8 t9']);
    expect(batch.usage?.prompt_tokens).toBe(3);
  });
});

describe('SimulatorBackend: random model', () => {
  it('is deterministic, and the stream has the same text as the non-stream answer', async () => {
    const params = { prompt: 'tell me a story', max_tokens: 100, seed: 7 };
    const a = await complete(request('llama', params));
    const b = await complete(request('llama', params));
    expect(a).toEqual(b);
    const streamed = merge(await collect(sim.stream(request('llama', params))));
    expect(streamed.get(0)?.text).toBe(a.output[0]?.text);
    expect(streamed.get(0)?.finish).toBe(a.output[0]?.finish_reason);
  });

  it('depends on the seed, the model name and the prompt', async () => {
    const text = async (model: string, params: Record<string, unknown>) =>
      (await complete(request(model, { max_tokens: 64, ...params }))).output[0]?.text;
    const base = await text('llama', { prompt: 'p', seed: 1 });
    expect(await text('llama', { prompt: 'p', seed: 2 })).not.toBe(base);
    expect(await text('mistral', { prompt: 'p', seed: 1 })).not.toBe(base);
    expect(await text('llama', { prompt: 'q', seed: 1 })).not.toBe(base);
  });

  it('has a natural length of 8 to 64 tokens ending in stop', async () => {
    const lengths: number[] = [];
    for (let i = 0; i < 30; i++) {
      const res = await complete(request('llama', { prompt: `prompt ${i}`, max_tokens: 1000 }));
      expect(res.output[0]?.finish_reason).toBe('stop');
      lengths.push(res.usage?.completion_tokens ?? -1);
    }
    expect(Math.min(...lengths)).toBeGreaterThanOrEqual(8);
    expect(Math.max(...lengths)).toBeLessThanOrEqual(64);
    expect(new Set(lengths).size).toBeGreaterThan(3);
  });

  it('defaults max_tokens (absent or null) to 16, cutting with length', async () => {
    // seed 3 of this prompt has a natural length above 16 (checked by the first assertion).
    const long = await complete(request('llama', { prompt: 'x', seed: 3, max_tokens: 1000 }));
    expect(long.usage?.completion_tokens).toBeGreaterThan(16);
    for (const max_tokens of [undefined, null]) {
      const res = await complete(request('llama', { prompt: 'x', seed: 3, max_tokens }));
      expect(res.usage?.completion_tokens).toBe(16);
      expect(res.output[0]?.finish_reason).toBe('length');
      expect(long.output[0]?.text.startsWith(res.output[0]?.text ?? '?')).toBe(true);
    }
  });

  it('does not let echo or logprobs change the generated text', async () => {
    const plain = (await complete(request('llama', { prompt: 'same', seed: 5 }))).output[0]?.text ?? '';
    const decorated = await complete(request('llama', { prompt: 'same', seed: 5, echo: true, logprobs: 3 }));
    expect(decorated.output[0]?.text).toBe(`same${plain}`);
  });
});

describe('SimulatorBackend: n and several prompts', () => {
  it('returns len(prompts) x n choices indexed prompt-major, usage counted once per prompt', async () => {
    const res = await complete(request('echo', { prompt: ['a b', 'c'], n: 2 }));
    expect(res.output.map((c) => [c.index, c.text])).toEqual([
      [0, ' a b'],
      [1, ' a b'],
      [2, ' c'],
      [3, ' c'],
    ]);
    expect(res.usage).toEqual({ prompt_tokens: 3, completion_tokens: 6, total_tokens: 9 });
  });

  it('gives the n choices of one prompt different random texts', async () => {
    const res = await complete(request('llama', { prompt: 'hi', n: 3 }));
    expect(new Set(res.output.map((c) => c.text)).size).toBe(3);
  });

  it('interleaves choices one per chunk, each ending with its finish_reason', async () => {
    const events = await collect(sim.stream(request('echo', { prompt: ['a b c', 'd'], n: 2 })));
    const all = events.filter((e) => e.type === 'chunk');
    expect(all.every((e) => e.type === 'chunk' && e.choices.length === 1)).toBe(true);
    expect(chunks(events).map((c) => c.index)).toEqual([0, 1, 2, 3, 0, 1, 0, 1]);
    const finishes = chunks(events).filter((c) => c.finish_reason !== null);
    expect(finishes.map((c) => c.index).sort()).toEqual([0, 1, 2, 3]);
    const merged = merge(events);
    expect([...merged.values()].map((m) => m.text)).toEqual([' a b c', ' a b c', ' d', ' d']);
    expect(events.at(-1)).toEqual({
      type: 'usage',
      usage: { prompt_tokens: 4, completion_tokens: 8, total_tokens: 12 },
    });
  });
});

describe('SimulatorBackend: echo, stop, logprobs, suffix', () => {
  it('echo prepends the prompt, in the first chunk when streaming', async () => {
    const res = await complete(request('echo', { prompt: 'one two', echo: true }));
    expect(res.output[0]?.text).toBe('one two one two');
    const events = await collect(sim.stream(request('echo', { prompt: 'one two', echo: true, n: 2 })));
    expect(
      chunks(events)
        .slice(0, 2)
        .map((c) => c.text),
    ).toEqual(['one two one', 'one two one']);
  });

  it('max_tokens 0 with echo returns the prompt only; without echo an empty text', async () => {
    const echoed = await complete(request('llama', { prompt: 'just this', echo: true, max_tokens: 0 }));
    expect(echoed.output[0]).toMatchObject({ text: 'just this', finish_reason: 'length' });
    expect(echoed.usage?.completion_tokens).toBe(0);
    const events = await collect(sim.stream(request('llama', { prompt: 'p', max_tokens: 0 })));
    expect(chunks(events)).toEqual([{ index: 0, text: '', logprobs: null, finish_reason: 'length' }]);
  });

  it('stop ends before the first occurrence, excluding the stop text', async () => {
    const res = await complete(request('echo', { prompt: 'one two three four', stop: [' three', 'zzz'] }));
    expect(res.output[0]).toMatchObject({ text: ' one two', finish_reason: 'stop' });
    // The token that completed the stop sequence was generated, so it is counted.
    expect(res.usage?.completion_tokens).toBe(3);
  });

  it('a stop sequence spanning tokens never leaks into the stream', async () => {
    const params = { prompt: 'one two three four', stop: 'o th' };
    const events = await collect(sim.stream(request('echo', params)));
    const texts = chunks(events).map((c) => c.text);
    expect(texts.join('')).toBe(' one tw');
    expect(texts.some((t) => t.includes('o th') || t.includes('th'))).toBe(false);
    expect(chunks(events).at(-1)?.finish_reason).toBe('stop');
    expect((await complete(request('echo', params))).output[0]?.text).toBe(' one tw');
  });

  it('the stop sequence that completes first wins, even if another starts earlier', async () => {
    const res = await complete(request('echo', { prompt: 'a b c d', stop: [' a b c d', ' b'] }));
    expect(res.output[0]?.text).toBe(' a');
  });

  it('logprobs: one entry per token with logprobs+1 alternatives and offsets into the text', async () => {
    const res = await complete(request('llama', { prompt: 'q', logprobs: 2, max_tokens: 5 }));
    const lp = res.output[0]?.logprobs;
    expect(lp).not.toBeNull();
    expect(lp?.tokens.join('')).toBe(res.output[0]?.text);
    expect(lp?.tokens).toHaveLength(5);
    expect(lp?.token_logprobs.every((x) => typeof x === 'number' && x <= 0)).toBe(true);
    for (const [i, top] of (lp?.top_logprobs ?? []).entries()) {
      expect(Object.keys(top ?? {})).toHaveLength(3);
      expect(top?.[lp?.tokens[i] ?? '']).toBe(lp?.token_logprobs[i]);
    }
    let offset = 0;
    for (const [i, token] of (lp?.tokens ?? []).entries()) {
      expect(lp?.text_offset[i]).toBe(offset);
      offset += token.length;
    }
  });

  it('logprobs 0 keeps only the sampled token; echo adds the prompt with a null first entry', async () => {
    const res = await complete(request('llama', { prompt: 'a b', logprobs: 0, echo: true, max_tokens: 2 }));
    const lp = res.output[0]?.logprobs;
    expect(lp?.tokens.slice(0, 2)).toEqual(['a', ' b']);
    expect(lp?.token_logprobs[0]).toBeNull();
    expect(lp?.top_logprobs?.[0]).toBeNull();
    expect(Object.keys(lp?.top_logprobs?.[2] ?? {})).toEqual([lp?.tokens[2]]);
  });

  it('streamed logprobs add up to the non-stream ones', async () => {
    const params = { prompt: 'p q', logprobs: 1, echo: true, n: 2, max_tokens: 4 };
    const whole = await complete(request('llama', params));
    const streamed = merge(await collect(sim.stream(request('llama', params))));
    for (const c of whole.output) {
      expect(streamed.get(c.index)?.tokens).toEqual(c.logprobs?.tokens);
      expect(streamed.get(c.index)?.text).toBe(c.text);
    }
  });

  it('accepts suffix without adding it to the text', async () => {
    const res = await complete(request('echo', { prompt: 'a', suffix: 'THE END' }));
    expect(res.output[0]?.text).toBe(' a');
  });

  it.each([
    [{ prompt: 'x', n: 0 }, 'n'],
    [{ prompt: 'x', logprobs: 6 }, 'logprobs'],
    [{ prompt: 'x', max_tokens: -1 }, 'max_tokens'],
    [{ prompt: 'x', stop: ['a', 'b', 'c', 'd', 'e'] }, 'stop'],
    [{ prompt: { text: 'x' } }, 'prompt'],
    [{ prompt: [] }, 'prompt'],
  ])('rejects invalid parameters %j with a 400 naming %s', async (params, param) => {
    const err: unknown = await complete(request('echo', params)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BackendError);
    expect(err).toMatchObject({ status: 400, type: 'invalid_request_error', param, failover: false });
  });
});

describe('SimulatorBackend: timing, deadline, abort', () => {
  it('waits ttft before the first token and itl between tokens; complete waits the same total', async () => {
    const { backend, state } = virtualTime();
    const d = deployment('echo', 100, 10);
    const base = {
      op: 'completion' as const,
      deployment: d,
      params: { prompt: 'a b c' },
      signal: new AbortController().signal,
    };
    const start = state.now;
    await collect(backend.stream({ ...base, deadline: start + 10_000 }));
    expect(state.sleeps).toEqual([100, 10, 10]);
    expect(state.now - start).toBe(120);
    state.sleeps.length = 0;
    await backend.complete({ ...base, deadline: state.now + 10_000 });
    expect(state.sleeps).toEqual([120]);
  });

  it('really takes about ttft + itl x (tokens - 1)', async () => {
    const req = { ...request('echo', { prompt: 'a b c d' }), deployment: deployment('echo', 40, 20) };
    const t0 = performance.now();
    await complete(req);
    expect(performance.now() - t0).toBeGreaterThanOrEqual(95);
  });

  it('fails with 504 timeout at the deadline, not after the full generation', async () => {
    const { backend, state } = virtualTime();
    const req = {
      ...request('echo', { prompt: 'a b' }),
      deployment: deployment('echo', 5_000, 0),
      deadline: state.now + 300,
    };
    const err: unknown = await backend.complete(req).catch((e: unknown) => e);
    expect(err).toMatchObject({ status: 504, type: 'server_error', code: 'timeout', failover: false });
    expect(state.now - (req.deadline - 300)).toBe(300);
  });

  it('fails with 504 at once when the deadline has already passed', async () => {
    const events: StreamEvent[] = [];
    const stream = sim.stream(request('echo', { prompt: 'a' }, { deadline: Date.now() - 1 }));
    const err: unknown = await (async () => {
      for await (const e of stream) {
        events.push(e);
      }
    })().catch((e: unknown) => e);
    expect(err).toMatchObject({ status: 504, code: 'timeout' });
    expect(events).toEqual([]);
  });

  it('stops promptly on abort with the signal reason and leaves no timer behind', async () => {
    const timers = () => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
    const before = timers();
    const ctl = new AbortController();
    const req = {
      ...request('echo', { prompt: 'a b c' }),
      deployment: deployment('echo', 0, 5_000),
      signal: ctl.signal,
    };
    const reason = new Error('client went away');
    const seen: StreamEvent[] = [];
    const t0 = performance.now();
    const err: unknown = await (async () => {
      for await (const e of sim.stream(req)) {
        seen.push(e);
        // Aborts while the simulator sleeps towards the next token.
        setTimeout(() => ctl.abort(reason), 20);
      }
    })().catch((e: unknown) => e);
    expect(err).toBe(reason);
    expect(seen).toHaveLength(1);
    expect(performance.now() - t0).toBeLessThan(1_000);
    expect(timers()).toBe(before);
  });

  it('rejects a non-stream call when aborted mid-wait', async () => {
    const ctl = new AbortController();
    const req = { ...request('echo', { prompt: 'a' }), deployment: deployment('echo', 10_000, 0), signal: ctl.signal };
    const pending = sim.complete(req);
    setTimeout(() => ctl.abort(), 20);
    const err: unknown = await pending.catch((e: unknown) => e);
    expect(err).toBeInstanceOf(DOMException);
    expect((err as DOMException).name).toBe('AbortError');
  });
});
