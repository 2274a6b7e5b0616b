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
const ROUTES = [CHAT, '/chat/completions'];
const words = (s: string) => s.split(/\s+/).filter(Boolean);

/** The backends with a predictable answer: what each says to the last user message, and its token count. */
const BACKENDS = [
  { name: 'simulator', model: 'echo', text: simulatorEcho, completionTokens: (p: string) => words(p).length },
  { name: 'upstream', model: 'up', text: fakeUpstreamText, completionTokens: (p: string) => words(p).length + 1 },
];

const CHUNK_CHOICE_KEYS = ['delta', 'finish_reason', 'index', 'logprobs'];
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
 * Contract: /v1/chat/completions (and /chat/completions) answers in OpenAI's shapes on the
 * simulator and on an OpenAI-compatible upstream. Non-stream: one `chat.completion` with a
 * `chatcmpl-` id, assistant messages, finish_reason and usage. Stream: SSE headers,
 * `chat.completion.chunk` events sharing id/created/model, the role first in each choice,
 * content deltas, exactly one finish_reason per choice, a usage chunk with `choices: []`
 * only when asked for (agreeing with the non-stream usage), and `data: [DONE]` last. `n`,
 * `stop`, `max_tokens`/`max_completion_tokens` behave as OpenAI documents; the official SDK
 * works against it, streamed and not.
 */
describe('contract: chat completions', () => {
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

  /** A raw non-stream request, checked for OpenAI's exact response shape. */
  async function whole(body: Record<string, unknown>, path = CHAT): Promise<ChatCompletion> {
    const before = Math.floor(Date.now() / 1000);
    const res = await raw(stack, body, { key, path });
    expect(res.status, res.text.slice(0, 500)).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^application\/json/);
    expect(res.headers.get('x-request-id')).toMatch(/^[0-9a-f]{32}$/);
    const json = res.json as ChatCompletion;
    const keys = Object.keys(json);
    expect(keys).toEqual(expect.arrayContaining(RESPONSE_KEYS));
    expect(keys.filter((k) => !RESPONSE_KEYS.includes(k) && !OPTIONAL_RESPONSE_KEYS.includes(k))).toEqual([]);
    expect(json.object).toBe('chat.completion');
    expect(json.id).toMatch(/^chatcmpl-\S+$/);
    expect(json.id).toContain(res.headers.get('x-request-id') ?? 'missing');
    expect(json.model).toBe(body.model);
    expect(Number.isInteger(json.created)).toBe(true);
    expect(Math.abs(json.created - before)).toBeLessThan(60);
    json.choices.forEach((c, i) => {
      expect(Object.keys(c).sort()).toEqual(['finish_reason', 'index', 'logprobs', 'message']);
      expect(c.index).toBe(i);
      expect(c.message.role).toBe('assistant');
    });
    const usage = json.usage;
    expect(Object.keys(usage)).toEqual(expect.arrayContaining(['completion_tokens', 'prompt_tokens', 'total_tokens']));
    for (const n of [usage.prompt_tokens, usage.completion_tokens, usage.total_tokens]) {
      expect(Number.isInteger(n) && n >= 0).toBe(true);
    }
    expect(usage.total_tokens).toBe(usage.prompt_tokens + usage.completion_tokens);
    return json;
  }

  /** A raw stream, checked for what every chat stream must hold. */
  async function stream(body: Record<string, unknown>, path = CHAT) {
    const res = await raw(stack, { ...body, stream: true }, { key, path });
    expect(res.status, res.text.slice(0, 500)).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/);
    expect(res.headers.get('cache-control')).toMatch(/\bno-cache\b/);
    expect(res.headers.get('x-accel-buffering')).toBe('no');
    expect(res.headers.get('x-request-id')).toMatch(/^[0-9a-f]{32}$/);
    // Every event is one `data: <json>` frame followed by a blank line.
    expect(res.text.endsWith('data: [DONE]\n\n')).toBe(true);
    const sse = parseSse(res.text);
    expect(sse.data.filter((d) => d === '[DONE]')).toHaveLength(1);
    expect(sse.errors).toEqual([]);
    expect(sse.events.length).toBeGreaterThan(0);
    for (const e of sse.events) {
      expect(e.object).toBe('chat.completion.chunk');
    }
    const heads = new Set(sse.events.map((e) => JSON.stringify([e.id, e.created, e.model])));
    expect(heads.size).toBe(1);
    expect(sse.events[0]).toMatchObject({ model: body.model, id: expect.stringMatching(/^chatcmpl-\S+$/) });
    const chunks = chatChunks(sse);
    for (const ch of chunks) {
      for (const c of ch.choices) {
        expect(Object.keys(c).sort()).toEqual(CHUNK_CHOICE_KEYS);
      }
    }
    return { sse, chunks, merged: demuxChat(chunks) };
  }

  describe.each(BACKENDS)('$name', (b) => {
    const prompt = 'hello chat world';

    it.each(ROUTES)('non-stream on %s: a chat.completion with the echo of the user message', async (path) => {
      const body = await whole({ model: b.model, messages: userSays(prompt) }, path);
      expect(body.choices).toHaveLength(1);
      const choice = body.choices[0];
      expect(choice).toMatchObject({ index: 0, logprobs: null, finish_reason: 'stop' });
      expect(choice?.message.content).toBe(b.text(prompt));
      expect(choice?.message.tool_calls).toBeUndefined();
      expect(body.usage.completion_tokens).toBe(b.completionTokens(prompt));
      expect(body.usage.prompt_tokens).toBeGreaterThan(0);
    });

    it.each(ROUTES)('stream on %s: role first, content deltas, one finish_reason, [DONE] last', async (path) => {
      const { chunks, merged, sse } = await stream({ model: b.model, messages: userSays(prompt) }, path);
      expect([...merged.keys()]).toEqual([0]);
      const m = merged.get(0);
      expectWellFormed(m);
      expect(m?.content).toBe(b.text(prompt));
      expect(m?.hasContent).toBe(true);
      // Several content deltas, not the whole answer in one.
      expect(chunks.filter((ch) => (ch.choices[0]?.delta.content ?? '') !== '').length).toBeGreaterThan(1);
      expect(chunks[0]?.choices[0]?.delta.role).toBe('assistant');
      expect(chunks.at(-1)?.choices[0]?.finish_reason).toBe('stop');
      // No usage at all when the client did not ask for it.
      expect(sse.usageChunks).toEqual([]);
      expect(sse.events.every((e) => !('usage' in e) || e.usage === null)).toBe(true);
      expect(chunks.every((ch) => ch.choices.every((c) => c.logprobs === null))).toBe(true);
    });

    it('the answer repeats the LAST user message, not an earlier one nor a later assistant one', async () => {
      const messages = [
        { role: 'system', content: 'be brief' },
        { role: 'user', content: 'first question' },
        { role: 'assistant', content: 'first answer' },
        { role: 'user', content: 'second question here' },
        { role: 'assistant', content: 'an assistant turn after it' },
      ];
      const res = await whole({ model: b.model, messages });
      expect(res.choices[0]?.message.content).toBe(b.text('second question here'));
      const { merged } = await stream({ model: b.model, messages });
      expect(merged.get(0)?.content).toBe(b.text('second question here'));
    });

    it('stream with include_usage: usage null on the other chunks, one usage chunk (choices []) before [DONE]', async () => {
      const body = { model: b.model, messages: userSays(prompt), n: 2 };
      const { sse, chunks } = await stream({ ...body, stream_options: { include_usage: true } });
      expect(sse.usageChunks).toHaveLength(1);
      const last = sse.events.at(-1) as unknown as ChatChunk;
      expect(last.choices).toEqual([]);
      expect(last.object).toBe('chat.completion.chunk');
      expect(chunks.every((ch) => ch.usage === null)).toBe(true);
      expect(last.usage?.completion_tokens).toBe(2 * b.completionTokens(prompt));
      expect(last.usage?.total_tokens).toBe((last.usage?.prompt_tokens ?? 0) + (last.usage?.completion_tokens ?? 0));
      // The stream's usage is the non-stream response's usage.
      expect(last.usage).toEqual((await whole(body)).usage);
    });

    it.each([undefined, { include_usage: false }, {}])('stream_options %j: no usage chunk', async (opts) => {
      const { sse } = await stream({
        model: b.model,
        messages: userSays('p q'),
        ...(opts && { stream_options: opts }),
      });
      expect(sse.usageChunks).toEqual([]);
      expect(sse.events.every((e) => e.usage === undefined || e.usage === null)).toBe(true);
    });

    it('n=3 non-stream: three choices in index order, each the whole answer; usage counts them all', async () => {
      const body = await whole({ model: b.model, messages: userSays('solo prompt here'), n: 3 });
      expect(body.choices.map((c) => c.index)).toEqual([0, 1, 2]);
      expect(body.choices.map((c) => c.message.content)).toEqual(Array(3).fill(b.text('solo prompt here')));
      expect(body.choices.every((c) => c.finish_reason === 'stop')).toBe(true);
      expect(body.usage.completion_tokens).toBe(3 * b.completionTokens('solo prompt here'));
    });

    it('n=3 stream: deltas demultiplex by index, each choice with its own role first and one finish', async () => {
      const { merged } = await stream({ model: b.model, messages: userSays('solo prompt here'), n: 3 });
      expect(contentsByIndex(merged)).toEqual(Array(3).fill(b.text('solo prompt here')));
      for (const i of [0, 1, 2]) {
        expectWellFormed(merged.get(i));
      }
    });

    it.each([{ max_tokens: 2 }, { max_completion_tokens: 2 }, { max_tokens: 50, max_completion_tokens: 2 }])(
      '%j cuts the answer with finish_reason length, streamed and not',
      async (limit) => {
        const prompt5 = 'a b c d e';
        const expected = b.text(prompt5);
        const body = { model: b.model, messages: userSays(prompt5), ...limit };
        const res = await whole(body);
        const text = res.choices[0]?.message.content ?? '';
        expect(res.choices[0]?.finish_reason).toBe('length');
        expect(res.usage.completion_tokens).toBe(2);
        expect(text.length).toBeGreaterThan(0);
        expect(expected.startsWith(text)).toBe(true);
        expect(text.length).toBeLessThan(expected.length);
        const { merged } = await stream(body);
        expectWellFormed(merged.get(0), 'length');
        expect(merged.get(0)?.content).toBe(text);
      },
    );

    it('a max_tokens the answer fits in: finish_reason stop, the whole answer', async () => {
      const res = await whole({ model: b.model, messages: userSays('a b c'), max_tokens: 50 });
      expect(res.choices[0]?.finish_reason).toBe('stop');
      expect(res.choices[0]?.message.content).toBe(b.text('a b c'));
    });

    it('the SDK: chat.completions.create, non-stream and stream iteration, usage agreeing', async () => {
      const res = await client.chat.completions.create({ model: b.model, messages: userSays(prompt) });
      expect(res.object).toBe('chat.completion');
      expect(res.id).toMatch(/^chatcmpl-/);
      expect(res.choices[0]?.message).toMatchObject({ role: 'assistant', content: b.text(prompt) });
      expect(res.choices[0]?.finish_reason).toBe('stop');
      const s = await client.chat.completions.create({
        model: b.model,
        messages: userSays(prompt),
        stream: true,
        stream_options: { include_usage: true },
      });
      let content = '';
      let role: string | undefined;
      let finish: string | null = null;
      let usage: OpenAI.CompletionUsage | null | undefined;
      const ids = new Set<string>();
      for await (const chunk of s) {
        ids.add(chunk.id);
        expect(chunk.object).toBe('chat.completion.chunk');
        for (const c of chunk.choices) {
          role ??= c.delta.role;
          content += c.delta.content ?? '';
          finish = c.finish_reason ?? finish;
        }
        usage = chunk.usage ?? usage;
      }
      expect(ids.size).toBe(1);
      expect(role).toBe('assistant');
      expect(content).toBe(b.text(prompt));
      expect(finish).toBe('stop');
      expect(usage).toEqual(res.usage);
    });

    it('the SDK stream helper: content events and finalChatCompletion', async () => {
      const s = client.chat.completions.stream({
        model: b.model,
        messages: userSays(prompt),
        stream_options: { include_usage: true },
      });
      const deltas: string[] = [];
      s.on('content', (delta) => deltas.push(delta));
      const final = await s.finalChatCompletion();
      expect(deltas.length).toBeGreaterThan(1);
      expect(deltas.join('')).toBe(b.text(prompt));
      expect(final.id).toMatch(/^chatcmpl-/);
      expect(final.choices).toHaveLength(1);
      expect(final.choices[0]?.message).toMatchObject({ role: 'assistant', content: b.text(prompt) });
      expect(final.choices[0]?.finish_reason).toBe('stop');
      expect(final.usage?.completion_tokens).toBe(b.completionTokens(prompt));
    });

    it('the SDK response id carries the request id', async () => {
      const { data, request_id } = await client.chat.completions
        .create({ model: b.model, messages: userSays('id') })
        .withResponse();
      expect(request_id).toMatch(/^[0-9a-f]{32}$/);
      expect(data.id).toContain(request_id ?? 'missing');
    });
  });

  describe('simulator lorem', () => {
    it('a text answer of its own, the same streamed and not for the same seed, usage agreeing', async () => {
      const body = { model: 'lorem', messages: userSays('tell me something'), seed: 7, max_tokens: 12 };
      const res = await whole(body);
      const text = res.choices[0]?.message.content ?? '';
      expect(words(text).length).toBeGreaterThan(0);
      expect(text).not.toBe(simulatorEcho('tell me something'));
      expect(res.usage.completion_tokens).toBeGreaterThan(0);
      expect(res.usage.completion_tokens).toBeLessThanOrEqual(12);
      const { merged, sse } = await stream({ ...body, stream_options: { include_usage: true } });
      expectWellFormed(merged.get(0), res.choices[0]?.finish_reason);
      expect(merged.get(0)?.content).toBe(text);
      expect(sse.usageChunks[0]?.usage).toEqual(res.usage);
    });

    it('the same seed gives the same text; some other seed gives another', async () => {
      const body = (seed: number) => ({ model: 'lorem', messages: userSays('determinism'), seed, max_tokens: 20 });
      const [a, again] = await Promise.all([whole(body(11)), whole(body(11))]);
      const text = a.choices[0]?.message.content ?? '';
      expect(text.length).toBeGreaterThan(0);
      expect(again.choices[0]?.message.content).toBe(text);
      const others = await Promise.all([12, 13, 14].map((s) => whole(body(s))));
      expect(others.some((o) => o.choices[0]?.message.content !== text)).toBe(true);
    });

    it('n=2 over the SDK: two choices, each well formed', async () => {
      const res = await client.chat.completions.create({
        model: 'lorem',
        messages: userSays('x'),
        n: 2,
        max_tokens: 4,
      });
      expect(res.choices.map((c) => c.index)).toEqual([0, 1]);
      for (const c of res.choices) {
        expect(c.message.role).toBe('assistant');
        expect((c.message.content ?? '').length).toBeGreaterThan(0);
        expect(['stop', 'length']).toContain(c.finish_reason);
      }
    });
  });

  describe('simulator echo generation', () => {
    it('answers the whole echo without max_tokens (no completions-style default of 16)', async () => {
      const thirty = Array.from({ length: 30 }, (_, i) => `w${i}`).join(' ');
      const res = await whole({ model: 'echo', messages: userSays(thirty) });
      expect(res.choices[0]?.message.content).toBe(simulatorEcho(thirty));
      expect(res.choices[0]?.finish_reason).toBe('stop');
      expect(res.usage.completion_tokens).toBe(30);
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
      { name: 'a stop string', stop: ' three', text: 'one two' },
      { name: 'a stop list (the earliest match wins)', stop: ['zzz', ' four', ' two'], text: 'one' },
      { name: 'a stop spanning tokens', stop: 'o th', text: 'one tw' },
    ])('$name cuts the content, finish_reason stop, streamed and not', async ({ stop, text }) => {
      const body = { model: 'echo', messages: userSays('one two three four'), stop };
      const res = await whole(body);
      expect(res.choices[0]?.message.content).toBe(text);
      expect(res.choices[0]?.finish_reason).toBe('stop');
      const { merged } = await stream(body);
      expect(merged.get(0)?.content).toBe(text);
      expectWellFormed(merged.get(0));
    });

    it('a stop that never occurs changes nothing', async () => {
      const res = await whole({ model: 'echo', messages: userSays('one two'), stop: ['zzz'] });
      expect(res.choices[0]?.message.content).toBe('one two');
      expect(res.choices[0]?.finish_reason).toBe('stop');
    });
  });

  describe('logprobs', () => {
    it('simulator: one entry per token with bytes and top_logprobs alternatives; streamed the same', async () => {
      const body = { model: 'lorem', messages: userSays('q'), logprobs: true, top_logprobs: 2, max_tokens: 5, seed: 3 };
      const res = await whole(body);
      const choice = res.choices[0];
      const content = choice?.logprobs?.content ?? [];
      expect(content).toHaveLength(5);
      expect(content.map((e) => e.token).join('')).toBe(choice?.message.content);
      for (const e of content) {
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
      for (const ch of chunks) {
        const c = ch.choices[0];
        if ((c?.delta.content ?? '') !== '') {
          expect(c?.logprobs?.content?.length).toBeGreaterThan(0);
        }
      }
    });

    it('simulator: logprobs true without top_logprobs has no alternatives; logprobs false is null', async () => {
      const withLp = await whole({ model: 'lorem', messages: userSays('q'), logprobs: true, max_tokens: 3 });
      const entries = withLp.choices[0]?.logprobs?.content ?? [];
      expect(entries).toHaveLength(3);
      expect(entries.every((e) => Array.isArray(e.top_logprobs) && e.top_logprobs.length === 0)).toBe(true);
      const without = await whole({ model: 'lorem', messages: userSays('q'), n: 2, logprobs: false });
      expect(without.choices.map((c) => c.logprobs)).toEqual([null, null]);
    });

    it('upstream: logprobs are relayed as they came, streamed and not', async () => {
      const body = { model: 'up', messages: userSays('a b'), logprobs: true, top_logprobs: 2 };
      const res = await whole(body);
      const entries = res.choices[0]?.logprobs?.content ?? [];
      expect(entries.map((e) => e.token)).toEqual([' echo:', ' a', ' b']);
      expect(entries.every((e) => e.top_logprobs.length === 2)).toBe(true);
      const { merged } = await stream(body);
      expect(merged.get(0)?.logprobTokens).toEqual([' echo:', ' a', ' b']);
    });
  });

  describe('upstream', () => {
    it('receives stop, n, the token limits and messages as sent, and asks for usage on a stream', async () => {
      const mark = probe();
      const messages = [{ role: 'system', content: 'sys' }, ...userSays('s t')];
      const { merged } = await stream({
        model: 'up',
        messages,
        stop: ['END'],
        n: 2,
        max_tokens: 40,
        max_completion_tokens: 50,
        ...mark,
      });
      expect(contentsByIndex(merged)).toEqual([fakeUpstreamText('s t'), fakeUpstreamText('s t')]);
      const seen = upstream.requests.find((r) => r.body.probe === mark.probe);
      expect(seen?.path).toBe('/v1/chat/completions');
      expect(seen?.body).toMatchObject({
        model: 'fake-model',
        messages,
        stream: true,
        stop: ['END'],
        n: 2,
        max_tokens: 40,
        max_completion_tokens: 50,
      });
      expect(seen?.body.stream_options).toEqual({ include_usage: true });
    });

    it('the upstream usage is relayed as it came, streamed and not', async () => {
      const body = { model: 'up', messages: [{ role: 'system', content: 'x y' }, ...userSays('a b c')] };
      const res = await whole(body);
      // The fake upstream counts the words of every message, and one token per piece it sends.
      expect(res.usage).toEqual({ prompt_tokens: 5, completion_tokens: 4, total_tokens: 9 });
      const { sse } = await stream({ ...body, stream_options: { include_usage: true } });
      expect(sse.usageChunks[0]?.usage).toEqual(res.usage);
    });
  });
});
