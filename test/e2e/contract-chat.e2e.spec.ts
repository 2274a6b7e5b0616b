import type OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type ChatChunk,
  type ChatCompletion,
  chatChunks,
  chatModels,
  contentsByIndex,
  demuxChat,
  fakeUpstreamText,
  type MergedChatChoice,
  parseSse,
  probe,
  raw,
  sdk,
  simulatorEcho,
  userSays,
} from '../support/contract-helpers';
import type { FakeUpstream } from '../support/fake-upstream';
import type { Stack } from '../support/stack';
import { startUpstreamStack } from '../support/upstream-stack';

const CHAT = '/v1/chat/completions';
const words = (s: string) => s.split(/\s+/).filter(Boolean);

/** The two backends, with what each answers to the last user message and how many tokens that is. */
const BACKENDS = [
  { name: 'simulator', model: 'echo', text: simulatorEcho, completionTokens: (p: string) => words(p).length },
  { name: 'upstream', model: 'up', text: fakeUpstreamText, completionTokens: (p: string) => words(p).length + 1 },
];

const CHOICE_KEYS = ['delta', 'finish_reason', 'index', 'logprobs'];
const RESPONSE_KEYS = ['choices', 'created', 'id', 'model', 'object', 'usage'];
/** Keys OpenAI may add to a response object besides RESPONSE_KEYS. */
const OPTIONAL_RESPONSE_KEYS = ['system_fingerprint', 'service_tier'];

/** A streamed choice that is well formed: the role first and once, one finish_reason, nothing after it. */
function expectWellFormed(m: MergedChatChoice | undefined, finish = 'stop'): void {
  expect(m).toBeDefined();
  expect(m?.roleFirst).toBe(true);
  expect(m?.roles).toEqual(['assistant']);
  expect(m?.finishes).toBe(1);
  expect(m?.finish_reason).toBe(finish);
  expect(m?.deltaAfterFinish).toBe(false);
}

/**
 * Contract: /v1/chat/completions answers in OpenAI's shapes on both backends. Non-stream:
 * one `chat.completion` with `chatcmpl-` id, assistant messages, finish_reason and usage.
 * Stream: `chat.completion.chunk` events sharing id/created/model, the role first in each
 * choice, content deltas, exactly one finish_reason per choice on a final empty delta, a
 * usage chunk with `choices: []` only when asked for, and `[DONE]` last. `n`, `stop`,
 * `max_tokens`/`max_completion_tokens`, `seed` and logprobs behave as OpenAI documents,
 * and the SDK's create / stream helpers work against it.
 */
describe('contract: chat completions, shapes and generation', () => {
  let upstream: FakeUpstream;
  let stack: Stack;
  let key: string;
  let client: OpenAI;

  beforeAll(async () => {
    ({ upstream, stack, key } = await startUpstreamStack('contract-chat', {}, chatModels));
    client = sdk(stack, key);
  });

  afterAll(async () => {
    await stack?.stop();
    await upstream?.close();
  });

  async function whole(body: Record<string, unknown>): Promise<ChatCompletion> {
    const res = await raw(stack, body, { key, path: CHAT });
    expect(res.status, res.text).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^application\/json/);
    return res.json as ChatCompletion;
  }

  /** A raw stream, checked for what every chat stream must hold. */
  async function stream(body: Record<string, unknown>) {
    const res = await raw(stack, { ...body, stream: true }, { key, path: CHAT });
    expect(res.status, res.text).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/);
    expect(res.headers.get('cache-control')).toMatch(/\bno-cache\b/);
    expect(res.headers.get('x-request-id')).toMatch(/^[0-9a-f]{32}$/);
    const sse = parseSse(res.text);
    expect(sse.data.at(-1)).toBe('[DONE]');
    expect(sse.data.filter((d) => d === '[DONE]')).toHaveLength(1);
    expect(sse.errors).toEqual([]);
    expect(sse.events.length).toBeGreaterThan(0);
    // Every event is a chat.completion.chunk of the same response.
    for (const e of sse.events) {
      expect(e.object).toBe('chat.completion.chunk');
    }
    const heads = new Set(sse.events.map((e) => JSON.stringify([e.id, e.created, e.model])));
    expect(heads.size).toBe(1);
    expect(sse.events[0]).toMatchObject({ model: body.model, id: expect.stringMatching(/^chatcmpl-/) });
    const chunks = chatChunks(sse);
    for (const ch of chunks) {
      for (const c of ch.choices) {
        expect(Object.keys(c).sort()).toEqual(CHOICE_KEYS);
      }
    }
    return { sse, chunks, merged: demuxChat(chunks) };
  }

  describe.each(BACKENDS)('$name', (b) => {
    const prompt = 'hello chat world';

    it('non-stream: a chat.completion with a chatcmpl- id, an assistant message, finish_reason and usage', async () => {
      const before = Math.floor(Date.now() / 1000);
      const body = await whole({ model: b.model, messages: userSays(prompt) });
      const keys = Object.keys(body);
      expect(keys).toEqual(expect.arrayContaining(RESPONSE_KEYS));
      expect(keys.filter((k) => !RESPONSE_KEYS.includes(k) && !OPTIONAL_RESPONSE_KEYS.includes(k))).toEqual([]);
      expect(body.object).toBe('chat.completion');
      expect(body.id).toMatch(/^chatcmpl-\S+$/);
      expect(body.model).toBe(b.model);
      expect(Number.isInteger(body.created)).toBe(true);
      expect(Math.abs(body.created - before)).toBeLessThan(60);
      expect(body.choices).toHaveLength(1);
      const choice = body.choices[0];
      expect(Object.keys(choice ?? {}).sort()).toEqual(['finish_reason', 'index', 'logprobs', 'message']);
      expect(choice).toMatchObject({ index: 0, logprobs: null, finish_reason: 'stop' });
      expect(choice?.message.role).toBe('assistant');
      expect(choice?.message.content).toBe(b.text(prompt));
      expect(choice?.message.tool_calls).toBeUndefined();
      const usage = body.usage;
      expect(Object.keys(usage).sort()).toEqual(
        expect.arrayContaining(['completion_tokens', 'prompt_tokens', 'total_tokens']),
      );
      expect(usage.completion_tokens).toBe(b.completionTokens(prompt));
      expect(usage.prompt_tokens).toBeGreaterThan(0);
      expect(usage.total_tokens).toBe(usage.prompt_tokens + usage.completion_tokens);
    });

    it('also on /chat/completions (without /v1)', async () => {
      const res = await raw(stack, { model: b.model, messages: userSays('x y') }, { key, path: '/chat/completions' });
      expect(res.status, res.text).toBe(200);
      expect((res.json as ChatCompletion).choices[0]?.message.content).toBe(b.text('x y'));
    });

    it('stream: chunks share id, role first, content deltas, one finish on an empty delta, [DONE] last', async () => {
      const { chunks, merged, sse } = await stream({ model: b.model, messages: userSays(prompt) });
      expect([...merged.keys()]).toEqual([0]);
      const m = merged.get(0);
      expectWellFormed(m);
      expect(m?.content).toBe(b.text(prompt));
      // The first chunk carries the role (content '' at most), the last one only the finish_reason.
      expect(chunks[0]?.choices[0]?.delta.role).toBe('assistant');
      expect(b.text(prompt).startsWith(chunks[0]?.choices[0]?.delta.content ?? '')).toBe(true);
      const last = chunks.at(-1)?.choices[0];
      expect(last?.finish_reason).toBe('stop');
      expect(last?.delta).toEqual({});
      // No usage field at all when the client did not ask for usage (as OpenAI).
      expect(sse.usageChunks).toEqual([]);
      expect(sse.events.every((e) => !('usage' in e))).toBe(true);
      expect(chunks.every((ch) => ch.choices.every((c) => c.logprobs === null))).toBe(true);
    });

    it('stream with include_usage: usage null on every chunk, then one usage chunk with choices [] before [DONE]', async () => {
      const body = { model: b.model, messages: userSays(prompt), n: 2 };
      const { sse, chunks } = await stream({ ...body, stream_options: { include_usage: true } });
      expect(sse.usageChunks).toHaveLength(1);
      const last = sse.events.at(-1) as unknown as ChatChunk;
      expect(last.choices).toEqual([]);
      expect(last.object).toBe('chat.completion.chunk');
      expect(chunks.every((ch) => ch.usage === null)).toBe(true);
      const reference = (await whole(body)).usage;
      expect(last.usage).toEqual(reference);
      expect(last.usage?.completion_tokens).toBe(2 * b.completionTokens(prompt));
    });

    it.each([undefined, { include_usage: false }])(
      'stream_options %j: no usage chunk, no usage field',
      async (opts) => {
        const { sse } = await stream({
          model: b.model,
          messages: userSays('p q'),
          ...(opts && { stream_options: opts }),
        });
        expect(sse.usageChunks).toEqual([]);
        expect(sse.events.every((e) => !('usage' in e))).toBe(true);
      },
    );

    it('n=3 non-stream: three choices in index order, each the whole answer, usage counts them all', async () => {
      const body = await whole({ model: b.model, messages: userSays('solo prompt here'), n: 3 });
      expect(body.choices.map((c) => c.index)).toEqual([0, 1, 2]);
      expect(body.choices.map((c) => c.message.content)).toEqual(Array(3).fill(b.text('solo prompt here')));
      expect(body.choices.every((c) => c.finish_reason === 'stop' && c.message.role === 'assistant')).toBe(true);
      expect(body.usage.completion_tokens).toBe(3 * b.completionTokens('solo prompt here'));
    });

    it('n=3 stream: interleaved deltas demultiplex by index, each with its own role first and one finish', async () => {
      const { chunks, merged } = await stream({ model: b.model, messages: userSays('solo prompt here'), n: 3 });
      expect(contentsByIndex(merged)).toEqual(Array(3).fill(b.text('solo prompt here')));
      for (const i of [0, 1, 2]) {
        expectWellFormed(merged.get(i));
      }
      const order = chunks.flatMap((ch) => ch.choices.map((c) => c.index));
      expect(order.indexOf(1)).toBeLessThan(order.lastIndexOf(0));
    });

    it('max_tokens and max_completion_tokens cut the answer with finish_reason length, streamed and not', async () => {
      const prompt5 = 'a b c d e';
      const expected = b.text(prompt5);
      for (const limit of [{ max_tokens: 2 }, { max_completion_tokens: 2 }]) {
        const body = { model: b.model, messages: userSays(prompt5), ...limit };
        const res = await whole(body);
        const text = res.choices[0]?.message.content ?? '';
        expect(res.choices[0]?.finish_reason, JSON.stringify(limit)).toBe('length');
        expect(res.usage.completion_tokens).toBe(2);
        expect(expected.startsWith(text)).toBe(true);
        expect(text.length).toBeLessThan(expected.length);
        const { merged } = await stream(body);
        expectWellFormed(merged.get(0), 'length');
        expect(merged.get(0)?.content).toBe(text);
      }
    });

    it('the SDK: chat.completions.create, streamed and not', async () => {
      const res = await client.chat.completions.create({ model: b.model, messages: userSays(prompt) });
      expect(res.object).toBe('chat.completion');
      expect(res.choices[0]?.message).toMatchObject({ role: 'assistant', content: b.text(prompt) });
      const s = await client.chat.completions.create({
        model: b.model,
        messages: userSays(prompt),
        stream: true,
        stream_options: { include_usage: true },
      });
      let content = '';
      let usage: OpenAI.CompletionUsage | null | undefined;
      for await (const chunk of s) {
        content += chunk.choices.map((c) => c.delta.content ?? '').join('');
        usage = chunk.usage ?? usage;
      }
      expect(content).toBe(b.text(prompt));
      expect(usage).toEqual(res.usage);
    });

    it('the SDK stream helper: content events, finalContent and finalChatCompletion', async () => {
      const s = client.chat.completions.stream({
        model: b.model,
        messages: userSays(prompt),
        stream_options: { include_usage: true },
      });
      const deltas: string[] = [];
      s.on('content', (delta) => deltas.push(delta));
      const final = await s.finalChatCompletion();
      expect(deltas.join('')).toBe(b.text(prompt));
      expect(final.id).toMatch(/^chatcmpl-/);
      expect(final.choices).toHaveLength(1);
      expect(final.choices[0]?.message).toMatchObject({ role: 'assistant', content: b.text(prompt) });
      expect(final.choices[0]?.finish_reason).toBe('stop');
      expect(final.usage?.completion_tokens).toBe(b.completionTokens(prompt));
      expect(await s.finalContent()).toBe(b.text(prompt));
    });

    it('the response id carries the request id', async () => {
      const { data, request_id } = await client.chat.completions
        .create({ model: b.model, messages: userSays('id') })
        .withResponse();
      expect(request_id).toMatch(/^[0-9a-f]{32}$/);
      expect(data.id).toContain(request_id ?? 'missing');
    });
  });

  describe('simulator generation parameters', () => {
    it('answers the whole echo without a max_tokens (no completions-style default of 16)', async () => {
      const thirty = Array.from({ length: 30 }, (_, i) => `w${i}`).join(' ');
      const res = await whole({ model: 'echo', messages: userSays(thirty) });
      expect(res.choices[0]?.message.content).toBe(simulatorEcho(thirty));
      expect(res.choices[0]?.finish_reason).toBe('stop');
      expect(res.usage.completion_tokens).toBe(30);
    });

    it('repeats the last user message, not an earlier one nor a later assistant one', async () => {
      const res = await whole({
        model: 'echo',
        messages: [
          { role: 'system', content: 'be brief' },
          { role: 'user', content: 'first question' },
          { role: 'assistant', content: 'first answer' },
          { role: 'user', content: 'second question here' },
        ],
      });
      expect(res.choices[0]?.message.content).toBe(' second question here');
    });

    it('a longer conversation costs more prompt tokens', async () => {
      const short = await whole({ model: 'echo', messages: userSays('a') });
      const long = await whole({
        model: 'echo',
        messages: [{ role: 'system', content: 'one two three four five six' }, ...userSays('a b c d e f')],
      });
      expect(long.usage.prompt_tokens).toBeGreaterThan(short.usage.prompt_tokens);
    });

    it.each([
      { name: 'a stop string', stop: ' three', text: ' one two' },
      { name: 'a stop list (first match wins)', stop: ['zzz', ' four', ' two'], text: ' one' },
      { name: 'a stop spanning tokens', stop: 'o th', text: ' one tw' },
    ])('$name cuts the content, finish_reason stop, streamed and not', async ({ stop, text }) => {
      const body = { model: 'echo', messages: userSays('one two three four'), stop };
      const res = await whole(body);
      expect(res.choices[0]?.message.content).toBe(text);
      expect(res.choices[0]?.finish_reason).toBe('stop');
      const { merged, chunks } = await stream(body);
      expect(merged.get(0)?.content).toBe(text);
      expectWellFormed(merged.get(0));
      const stops = [stop].flat().filter((s) => s !== 'zzz');
      for (const ch of chunks) {
        for (const s of stops) {
          expect(ch.choices[0]?.delta.content ?? '').not.toContain(s.trim());
        }
      }
    });

    it('the same seed gives the same text; some other seed gives another', async () => {
      const body = (seed: number) => ({ model: 'lorem', messages: userSays('determinism'), seed, max_tokens: 20 });
      const [a, b] = await Promise.all([whole(body(11)), whole(body(11))]);
      const text = a.choices[0]?.message.content ?? '';
      expect(text.length).toBeGreaterThan(0);
      expect(b.choices[0]?.message.content).toBe(text);
      const others = await Promise.all([12, 13, 14, 15].map((s) => whole(body(s))));
      expect(others.some((o) => o.choices[0]?.message.content !== text)).toBe(true);
      // A stream with the same seed is the same text.
      const { merged } = await stream(body(11));
      expect(merged.get(0)?.content).toBe(text);
    });

    it('logprobs with top_logprobs: one entry per token, bytes, the alternatives; streamed the same', async () => {
      const body = { model: 'lorem', messages: userSays('q'), logprobs: true, top_logprobs: 2, max_tokens: 5, seed: 3 };
      const res = await whole(body);
      const choice = res.choices[0];
      const content = choice?.logprobs?.content ?? [];
      expect(content).toHaveLength(5);
      expect(content.map((e) => e.token).join('')).toBe(choice?.message.content);
      for (const e of content) {
        expect(typeof e.logprob).toBe('number');
        expect(e.logprob).toBeLessThanOrEqual(0);
        expect(e.bytes).toEqual([...Buffer.from(e.token)]);
        expect(e.top_logprobs).toHaveLength(2);
        for (const t of e.top_logprobs) {
          expect(Object.keys(t).sort()).toEqual(['bytes', 'logprob', 'token']);
          expect(t.logprob).toBeLessThanOrEqual(0);
        }
      }
      const { merged, chunks } = await stream(body);
      expect(merged.get(0)?.logprobTokens).toEqual(content.map((e) => e.token));
      // Content chunks carry their token's logprobs; the role and finish chunks carry none.
      for (const ch of chunks) {
        const c = ch.choices[0];
        if ((c?.delta.content ?? '') !== '') {
          expect(c?.logprobs?.content?.length).toBeGreaterThan(0);
        }
      }
    });

    it('logprobs true without top_logprobs: no alternatives; without logprobs: null', async () => {
      const withLp = await whole({ model: 'lorem', messages: userSays('q'), logprobs: true, max_tokens: 3 });
      const entries = withLp.choices[0]?.logprobs?.content ?? [];
      expect(entries).toHaveLength(3);
      expect(entries.every((e) => Array.isArray(e.top_logprobs) && e.top_logprobs.length === 0)).toBe(true);
      const without = await whole({ model: 'lorem', messages: userSays('q'), n: 2, logprobs: false });
      expect(without.choices.map((c) => c.logprobs)).toEqual([null, null]);
    });

    it('accepts temperature, top_p, penalties, logit_bias, user and nulls for every optional parameter', async () => {
      for (const extra of [
        { temperature: 0, top_p: 1, presence_penalty: 2, frequency_penalty: -2 },
        { temperature: 2, top_p: 0, logit_bias: { '50256': -100 }, user: 'end-user' },
        {
          temperature: null,
          top_p: null,
          n: null,
          stop: null,
          max_tokens: null,
          max_completion_tokens: null,
          presence_penalty: null,
          frequency_penalty: null,
          logit_bias: null,
          logprobs: null,
          top_logprobs: null,
          seed: null,
          stream: null,
          stream_options: null,
          tools: null,
          tool_choice: null,
          parallel_tool_calls: null,
          response_format: null,
          user: null,
        },
      ]) {
        const res = await raw(stack, { model: 'echo', messages: userSays('fine'), ...extra }, { key, path: CHAT });
        expect(res.status, `${JSON.stringify(extra)}: ${res.text}`).toBe(200);
        expect((res.json as ChatCompletion).choices[0]?.message.content).toBe(' fine');
      }
    });
  });

  describe('upstream generation parameters', () => {
    it('relays the upstream logprobs as they came', async () => {
      const body = { model: 'up', messages: userSays('a b'), logprobs: true, top_logprobs: 2 };
      const res = await whole(body);
      const entries = res.choices[0]?.logprobs?.content ?? [];
      expect(entries.map((e) => e.token)).toEqual([' echo:', ' a', ' b']);
      expect(entries.every((e) => e.top_logprobs.length === 2)).toBe(true);
      const { merged } = await stream(body);
      expect(merged.get(0)?.logprobTokens).toEqual([' echo:', ' a', ' b']);
    });

    it('forwards stop, seed, n and the token limit, and asks for usage on a stream', async () => {
      const mark = probe();
      const { merged } = await stream({
        model: 'up',
        messages: userSays('s t'),
        stop: ['END'],
        seed: 5,
        n: 2,
        max_completion_tokens: 50,
        ...mark,
      });
      expect(contentsByIndex(merged)).toEqual([fakeUpstreamText('s t'), fakeUpstreamText('s t')]);
      const seen = upstream.requests.find((r) => r.body.probe === mark.probe);
      expect(seen?.path).toBe('/v1/chat/completions');
      expect(seen?.body).toMatchObject({
        model: 'fake-model',
        stream: true,
        stop: ['END'],
        seed: 5,
        n: 2,
        max_completion_tokens: 50,
      });
      expect(seen?.body.stream_options).toEqual({ include_usage: true });
    });
  });
});
