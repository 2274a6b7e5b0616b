import type OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type CompletionChunk,
  contractModels,
  demux,
  fakeUpstreamText,
  parseSse,
  raw,
  sdk,
  type StreamChoice,
  textsByIndex,
} from '../support/contract-helpers';
import type { FakeUpstream } from '../support/fake-upstream';
import type { Stack } from '../support/stack';
import { startUpstreamStack } from '../support/upstream-stack';

interface Completion {
  id: string;
  object: string;
  created: number;
  model: string;
  choices: StreamChoice[];
  usage: { prompt_tokens: number; completion_tokens: number; total_tokens: number };
}

const words = (s: string) => s.split(/\s+/).filter(Boolean);

/** The two backends, with what each answers to one prompt and the usage it reports. */
const BACKENDS = [
  {
    name: 'simulator',
    model: 'echo',
    text: (p: string) =>
      words(p)
        .map((w) => ` ${w}`)
        .join(''),
    completionTokens: (p: string) => words(p).length,
  },
  {
    name: 'upstream',
    model: 'up',
    text: fakeUpstreamText,
    completionTokens: (p: string) => words(p).length + 1,
  },
];

function expectedUsage(backend: (typeof BACKENDS)[number], prompts: string[], n: number) {
  const prompt = prompts.reduce((sum, p) => sum + words(p).length, 0);
  const completion = n * prompts.reduce((sum, p) => sum + backend.completionTokens(p), 0);
  return { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion };
}

/**
 * Contract: several prompts and n>1 give len(prompts)×n choices with
 * index = prompt_index×n + choice_index on both backends, streamed (interleaved, demultiplexed
 * by index) and not; usage is always on a non-stream response and only with include_usage on
 * a stream; echo, stop, logprobs, max_tokens and suffix behave as OpenAI documents.
 */
describe('contract: choices, usage and generation parameters', () => {
  let upstream: FakeUpstream;
  let stack: Stack;
  let key: string;
  let client: OpenAI;

  beforeAll(async () => {
    ({ upstream, stack, key } = await startUpstreamStack('contract-choices', {}, contractModels));
    client = sdk(stack, key);
  });

  afterAll(async () => {
    await stack?.stop();
    await upstream?.close();
  });

  async function stream(body: Record<string, unknown>) {
    const res = await raw(stack, { ...body, stream: true }, { key });
    expect(res.status, res.text).toBe(200);
    const sse = parseSse(res.text);
    expect(sse.data.at(-1)).toBe('[DONE]');
    expect(sse.data.filter((d) => d === '[DONE]')).toHaveLength(1);
    expect(sse.errors).toEqual([]);
    // Every event of one response shares id, object, created and model.
    const heads = new Set(sse.events.map((e) => JSON.stringify([e.id, e.object, e.created, e.model])));
    expect(heads.size).toBe(1);
    expect(sse.events[0]).toMatchObject({
      object: 'text_completion',
      model: body.model,
      id: expect.stringMatching(/^cmpl-/),
    });
    return sse;
  }

  const prompts = ['alpha beta', 'gamma delta epsilon', 'zeta'];
  const cases = BACKENDS.flatMap((b) => [
    { backend: b, prompt: prompts, n: 2, label: `${b.name}: 3 string prompts, n=2` },
    { backend: b, prompt: 'solo prompt here', n: 3, label: `${b.name}: 1 prompt, n=3` },
    { backend: b, prompt: ['one two', 'three'], n: 1, label: `${b.name}: 2 prompts, n=1` },
  ]);
  const expectedTexts = (c: (typeof cases)[number]) =>
    [c.prompt].flat().flatMap((p) => Array.from({ length: c.n }, () => c.backend.text(p)));

  it.each(cases)('non-stream $label: choices ordered prompt-major with their usage', async (c) => {
    const res = await raw(stack, { model: c.backend.model, prompt: c.prompt, n: c.n }, { key });
    expect(res.status, res.text).toBe(200);
    const body = res.json as Completion;
    expect(body.object).toBe('text_completion');
    expect(body.choices.map((x) => x.index)).toEqual(expectedTexts(c).map((_, i) => i));
    expect(body.choices.map((x) => x.text)).toEqual(expectedTexts(c));
    expect(body.choices.every((x) => x.finish_reason === 'stop' && x.logprobs === null)).toBe(true);
    expect(body.usage).toEqual(expectedUsage(c.backend, [c.prompt].flat(), c.n));
  });

  it.each(cases)('stream $label: interleaved chunks demultiplex by index', async (c) => {
    const sse = await stream({ model: c.backend.model, prompt: c.prompt, n: c.n });
    const merged = demux(sse.chunks);
    expect(textsByIndex(merged)).toEqual(expectedTexts(c));
    for (const m of merged.values()) {
      expect(m.finishes).toBe(1);
      expect(m.finish_reason).toBe('stop');
    }
    // Interleaved: index 1 speaks before index 0 has finished (they are not sent one after the other).
    const order = sse.chunks.flatMap((ch) => ch.choices.map((x) => x.index));
    const lastOf0 = order.lastIndexOf(0);
    expect(order.indexOf(1)).toBeLessThan(lastOf0);
    expect(sse.usageChunks).toEqual([]);
  });

  it.each(BACKENDS)('$name: token-id prompts, int[] as one prompt and int[][] as a batch', async (b) => {
    const one = await client.completions.create({ model: b.model, prompt: [7, 8, 9], n: 2 });
    expect(one.choices.map((x) => x.text)).toEqual([b.text('t7 t8 t9'), b.text('t7 t8 t9')]);
    const batch = await client.completions.create({ model: b.model, prompt: [[1, 2], [3]], n: 2 });
    expect(batch.choices.map((x) => [x.index, x.text])).toEqual([
      [0, b.text('t1 t2')],
      [1, b.text('t1 t2')],
      [2, b.text('t3')],
      [3, b.text('t3')],
    ]);
  });

  it.each(BACKENDS)('$name: the SDK stream demultiplexes 2 prompts × n=2', async (b) => {
    const s = await client.completions.create({ model: b.model, prompt: ['x y', 'z'], n: 2, stream: true });
    const chunks: CompletionChunk[] = [];
    for await (const chunk of s) {
      chunks.push(chunk);
    }
    expect(textsByIndex(demux(chunks))).toEqual([b.text('x y'), b.text('x y'), b.text('z'), b.text('z')]);
  });

  describe('usage', () => {
    it.each(BACKENDS)('$name: a non-stream response always has usage', async (b) => {
      const res = await client.completions.create({ model: b.model, prompt: 'p q r', max_tokens: 50 });
      expect(res.usage).toEqual(expectedUsage(b, ['p q r'], 1));
    });

    it.each(BACKENDS.flatMap((b) => [undefined, { include_usage: false }].map((o) => ({ ...b, opts: o }))))(
      '$name: no usage chunk and no usage field with stream_options $opts',
      async ({ model, opts }) => {
        const sse = await stream({ model, prompt: 'p q', ...(opts && { stream_options: opts }) });
        expect(sse.usageChunks).toEqual([]);
        expect(sse.events.every((e) => !('usage' in e))).toBe(true);
      },
    );

    it.each(BACKENDS)('$name: include_usage adds one final usage chunk with choices []', async (b) => {
      const sse = await stream({ model: b.model, prompt: ['p q', 'r'], n: 2, stream_options: { include_usage: true } });
      expect(sse.usageChunks).toHaveLength(1);
      const last = sse.events.at(-1) as unknown as CompletionChunk;
      expect(last.choices).toEqual([]);
      expect(last.usage).toEqual(expectedUsage(b, ['p q', 'r'], 2));
      // "All other chunks will also include a usage field, but with a null value."
      expect(sse.chunks.every((ch) => ch.usage === null)).toBe(true);
    });

    it('the SDK sees the usage chunk last', async () => {
      const s = await client.completions.create({
        model: 'echo',
        prompt: 'u v w',
        stream: true,
        stream_options: { include_usage: true },
      });
      const seen: CompletionChunk[] = [];
      for await (const chunk of s) {
        seen.push(chunk);
      }
      expect(seen.at(-1)?.choices).toEqual([]);
      expect(seen.at(-1)?.usage).toEqual({ prompt_tokens: 3, completion_tokens: 3, total_tokens: 6 });
    });
  });

  describe('echo, stop, max_tokens, logprobs, suffix (simulator)', () => {
    /** Runs a request non-stream and streamed; asserts both give the same choice 0. */
    async function both(body: Record<string, unknown>) {
      const res = await raw(stack, body, { key });
      expect(res.status, res.text).toBe(200);
      const whole = res.json as Completion;
      const merged = demux((await stream(body)).chunks);
      const choice = whole.choices[0] as StreamChoice;
      expect(merged.get(0)?.text).toBe(choice.text);
      expect(merged.get(0)?.finish_reason).toBe(choice.finish_reason);
      return { whole, choice, merged };
    }

    it.each([
      {
        name: 'echo prepends the prompt',
        body: { prompt: 'one two', echo: true },
        text: 'one two one two',
        finish: 'stop',
        tokens: 2,
      },
      {
        name: 'echo with max_tokens 0 returns the prompt only',
        body: { prompt: 'one two', echo: true, max_tokens: 0 },
        text: 'one two',
        finish: 'length',
        tokens: 0,
      },
      {
        name: 'max_tokens 0 returns empty text',
        body: { prompt: 'one two', max_tokens: 0 },
        text: '',
        finish: 'length',
        tokens: 0,
      },
      {
        name: 'max_tokens truncates with finish_reason length',
        body: { prompt: 'a b c d e', max_tokens: 2 },
        text: ' a b',
        finish: 'length',
        tokens: 2,
      },
      {
        name: 'stop (string) is excluded from the text',
        body: { prompt: 'one two three four', stop: ' three' },
        text: ' one two',
        finish: 'stop',
        tokens: 3,
      },
      {
        name: 'stop (list): the first one to match wins',
        body: { prompt: 'one two three four', stop: ['zzz', ' four', ' two'] },
        text: ' one',
        finish: 'stop',
        tokens: 2,
      },
      {
        name: 'stop spanning tokens',
        body: { prompt: 'one two three four', stop: 'o th' },
        text: ' one tw',
        finish: 'stop',
        tokens: 3,
      },
      {
        name: 'echo is not cut by stop',
        body: { prompt: 'one two', echo: true, stop: 'two' },
        text: 'one two one ',
        finish: 'stop',
        tokens: 2,
      },
      {
        name: 'suffix is accepted and not part of the text',
        body: { prompt: 'one two', suffix: ' SUFFIX' },
        text: ' one two',
        finish: 'stop',
        tokens: 2,
      },
    ])('$name, streamed and not', async ({ body, text, finish, tokens }) => {
      const { whole, choice } = await both({ model: 'echo', ...body });
      expect(choice.text).toBe(text);
      expect(choice.finish_reason).toBe(finish);
      expect(whole.usage.completion_tokens).toBe(tokens);
    });

    it('a stop sequence never appears in any streamed chunk', async () => {
      const sse = await stream({ model: 'echo', prompt: 'one two three four', stop: 'o th' });
      expect(sse.chunks.some((ch) => ch.choices.some((x) => x.text.includes('th')))).toBe(false);
    });

    it('logprobs n: one entry per token, n+1 alternatives, offsets into the text', async () => {
      const { choice, merged } = await both({ model: 'lorem', prompt: 'q', logprobs: 2, max_tokens: 5, seed: 3 });
      const lp = choice.logprobs as {
        tokens: string[];
        token_logprobs: number[];
        top_logprobs: Record<string, number>[];
        text_offset: number[];
      };
      expect(lp.tokens).toHaveLength(5);
      expect(lp.tokens.join('')).toBe(choice.text);
      expect(lp.token_logprobs.every((x) => typeof x === 'number' && x <= 0)).toBe(true);
      lp.top_logprobs.forEach((top, i) => {
        expect(Object.keys(top)).toHaveLength(3);
        expect(top[lp.tokens[i] as string]).toBe(lp.token_logprobs[i]);
      });
      let offset = 0;
      lp.tokens.forEach((t, i) => {
        expect(lp.text_offset[i]).toBe(offset);
        offset += t.length;
      });
      expect(merged.get(0)?.tokens).toEqual(lp.tokens);
    });

    it('logprobs 0 keeps only the sampled token; echo adds prompt tokens, the first with null', async () => {
      const { choice } = await both({ model: 'echo', prompt: 'a b', logprobs: 0, echo: true });
      const lp = choice.logprobs as { tokens: string[]; token_logprobs: (number | null)[]; top_logprobs: unknown[] };
      expect(lp.tokens).toEqual(['a', ' b', ' a', ' b']);
      expect(lp.token_logprobs[0]).toBeNull();
      expect(lp.top_logprobs[0]).toBeNull();
      expect(Object.keys(lp.top_logprobs[3] as object)).toEqual([' b']);
    });

    it('without logprobs every choice has logprobs: null', async () => {
      const { whole } = await both({ model: 'lorem', prompt: 'q', n: 2 });
      expect(whole.choices.map((x) => x.logprobs)).toEqual([null, null]);
    });

    it('the same request with the same seed gives the same text', async () => {
      const body = { model: 'lorem', prompt: 'determinism', seed: 11, max_tokens: 20 };
      const [a, b] = await Promise.all([client.completions.create(body), client.completions.create(body)]);
      expect(a.choices[0]?.text).toBe(b.choices[0]?.text);
      expect(a.choices[0]?.text.length).toBeGreaterThan(0);
    });

    it('the upstream honours max_tokens and reports finish_reason length through the gateway', async () => {
      const { choice } = await both({ model: 'up', prompt: 'a b c', max_tokens: 2 });
      expect(choice.text).toBe(' echo: a');
      expect(choice.finish_reason).toBe('length');
    });
  });
});
