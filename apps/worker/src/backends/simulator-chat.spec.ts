import { describe, expect, it } from 'vitest';
import type { ChatChoice, ChatChunkChoice, ChatTokenLogprob, ChoiceDelta, Deployment } from '@app/common';
import { BackendError } from './backend.error';
import type { BackendRequest, BackendResult, StreamEvent } from './llm-backend';
import { SimulatorBackend } from './simulator.backend';

type ChatResult = Omit<BackendResult, 'output'> & { output: ChatChoice[] };

function deployment(upstreamModel: string, ttftMs = 0, itlMs = 0): Deployment {
  return { id: 'sim#0', modelName: 'sim', provider: 'simulator', upstreamModel, ttftMs, itlMs, extraBodyAllowed: [] };
}

function request(upstreamModel: string, params: Record<string, unknown>): BackendRequest {
  return {
    op: 'chat',
    deployment: deployment(upstreamModel),
    params,
    signal: new AbortController().signal,
    deadline: Date.now() + 60_000,
  };
}

const sim = new SimulatorBackend();

function chat(model: string, params: Record<string, unknown>): Promise<ChatResult> {
  return sim.complete(request(model, params)) as Promise<ChatResult>;
}

async function stream(model: string, params: Record<string, unknown>): Promise<StreamEvent[]> {
  const events: StreamEvent[] = [];
  for await (const e of sim.stream(request(model, params))) {
    events.push(e);
  }
  return events;
}

function chunks(events: StreamEvent[]): ChatChunkChoice[] {
  return events.flatMap((e) => (e.type === 'chunk' ? (e.choices as ChatChunkChoice[]) : []));
}

interface Merged {
  content: string | null;
  finish: string | null;
  tokens: string[];
  calls: { id?: string; name?: string; arguments: string }[];
}

/** Accumulates deltas per choice index as the OpenAI SDKs do. */
function merge(events: StreamEvent[]): Map<number, Merged> {
  const out = new Map<number, Merged>();
  for (const c of chunks(events)) {
    const m = out.get(c.index) ?? { content: null, finish: null, tokens: [], calls: [] };
    if (typeof c.delta.content === 'string') {
      m.content = (m.content ?? '') + c.delta.content;
    }
    for (const t of c.delta.tool_calls ?? []) {
      const call = (m.calls[t.index] ??= { arguments: '' });
      call.id ??= t.id;
      call.name ??= t.function?.name;
      call.arguments += t.function?.arguments ?? '';
    }
    m.finish = c.finish_reason ?? m.finish;
    m.tokens.push(...(c.logprobs?.content ?? []).map((e) => e.token));
    out.set(c.index, m);
  }
  return out;
}

const user = (content: unknown) => ({ role: 'user', content });

describe('SimulatorBackend chat: text', () => {
  it('echo repeats the words of the last user message, as an assistant message', async () => {
    const res = await chat('echo', {
      messages: [
        { role: 'system', content: 'be brief' },
        user('first one'),
        { role: 'assistant', content: 'ok' },
        user('hello  big world'),
      ],
    });
    expect(res.output).toEqual([
      {
        index: 0,
        message: { role: 'assistant', content: 'hello big world', refusal: null },
        logprobs: null,
        finish_reason: 'stop',
      },
    ]);
    // Prompt tokens: the words of every message's text (2 + 2 + 1 + 3).
    expect(res.usage).toEqual({ prompt_tokens: 8, completion_tokens: 3, total_tokens: 11 });
  });

  it('echo reads the text parts of an array content, ignoring other parts', async () => {
    const content = [
      { type: 'text', text: 'look at' },
      { type: 'image_url', image_url: { url: 'data:image/png;base64,AAAA' } },
      { type: 'text', text: 'this' },
    ];
    const res = await chat('echo', { messages: [user(content)] });
    expect(res.output[0]?.message.content).toBe('look at this');
    expect(res.usage?.prompt_tokens).toBe(3);
  });

  it('lorem models produce the completion simulator words for the same prompt, without the leading space', async () => {
    const params = { max_tokens: 40, seed: 11 };
    const text = await sim.complete({ ...request('lorem', { prompt: 'tell me', ...params }), op: 'completion' });
    const res = await chat('lorem', { messages: [user('tell me')], ...params });
    expect(res.output[0]?.message.content).toBe((text.output[0] as ChoiceDelta).text.trimStart());
    expect(res.output[0]?.message.content).toMatch(/^\S/);
  });

  it('honours max_tokens, and max_completion_tokens over it', async () => {
    const messages = [user('a b c d e')];
    const a = await chat('echo', { messages, max_tokens: 2 });
    expect(a.output[0]).toMatchObject({ message: { content: 'a b' }, finish_reason: 'length' });
    const b = await chat('echo', { messages, max_tokens: 2, max_completion_tokens: 4 });
    expect(b.output[0]).toMatchObject({ message: { content: 'a b c d' }, finish_reason: 'length' });
    expect(b.usage?.completion_tokens).toBe(4);
    const c = await chat('echo', { messages, max_completion_tokens: 1, max_tokens: null });
    expect(c.output[0]?.message.content).toBe('a');
  });

  it('n gives that many choices, differently worded for lorem; stop cuts each', async () => {
    const lorem = await chat('lorem', { messages: [user('hi')], n: 3 });
    expect(lorem.output.map((c) => c.index)).toEqual([0, 1, 2]);
    expect(new Set(lorem.output.map((c) => c.message.content)).size).toBe(3);
    const stopped = await chat('echo', { messages: [user('one two three')], n: 2, stop: [' three'] });
    expect(stopped.output.map((c) => [c.message.content, c.finish_reason])).toEqual([
      ['one two', 'stop'],
      ['one two', 'stop'],
    ]);
  });

  it('is deterministic, and the stream carries the same text as the non-stream answer', async () => {
    const params = { messages: [user('story')], n: 2, seed: 3, max_tokens: 30, stop: 'the', logprobs: true };
    const a = await chat('lorem', params);
    expect(await chat('lorem', params)).toEqual(a);
    const merged = merge(await stream('lorem', params));
    for (const c of a.output) {
      expect(merged.get(c.index)?.content).toBe(c.message.content);
      expect(merged.get(c.index)?.finish).toBe(c.finish_reason);
      expect(merged.get(c.index)?.tokens).toEqual(c.logprobs?.content?.map((e) => e.token));
    }
  });

  it('streams like OpenAI: role and empty content first, content deltas interleaved, delta {} with finish, usage', async () => {
    const events = await stream('echo', { messages: [user('x y')], n: 2 });
    expect(chunks(events)).toEqual([
      { index: 0, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null },
      { index: 0, delta: { content: 'x' }, logprobs: null, finish_reason: null },
      { index: 1, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null },
      { index: 1, delta: { content: 'x' }, logprobs: null, finish_reason: null },
      { index: 0, delta: { content: ' y' }, logprobs: null, finish_reason: null },
      { index: 0, delta: {}, logprobs: null, finish_reason: 'stop' },
      { index: 1, delta: { content: ' y' }, logprobs: null, finish_reason: null },
      { index: 1, delta: {}, logprobs: null, finish_reason: 'stop' },
    ]);
    expect(events.every((e) => e.type === 'usage' || e.choices.length === 1)).toBe(true);
    expect(events.at(-1)).toEqual({
      type: 'usage',
      usage: { prompt_tokens: 2, completion_tokens: 4, total_tokens: 6 },
    });
  });

  it('an empty answer streams the opening delta and the finish only', async () => {
    const events = await stream('echo', { messages: [{ role: 'system', content: 'no user here' }] });
    expect(chunks(events).map((c) => c.delta)).toEqual([{ role: 'assistant', content: '' }, {}]);
  });

  it('logprobs: one entry per token with top_logprobs alternatives (the sampled token first) and UTF-8 bytes', async () => {
    const res = await chat('lorem', { messages: [user('q')], logprobs: true, top_logprobs: 3, max_tokens: 5 });
    const content = res.output[0]?.logprobs?.content ?? [];
    expect(content).toHaveLength(5);
    expect(content.map((e) => e.token).join('')).toBe(res.output[0]?.message.content);
    for (const e of content) {
      expect(Object.keys(e).sort()).toEqual(['bytes', 'logprob', 'token', 'top_logprobs']);
      expect(e.logprob).toBeLessThanOrEqual(0);
      expect(e.bytes).toEqual([...Buffer.from(e.token)]);
      expect(e.top_logprobs).toHaveLength(3);
      expect(e.top_logprobs[0]).toEqual({ token: e.token, logprob: e.logprob, bytes: e.bytes });
    }
    const none = await chat('lorem', { messages: [user('q')], logprobs: true, max_tokens: 2 });
    expect(none.output[0]?.logprobs?.content?.every((e: ChatTokenLogprob) => e.top_logprobs.length === 0)).toBe(true);
    const off = await chat('lorem', { messages: [user('q')], top_logprobs: 2 });
    expect(off.output[0]?.logprobs).toBeNull();
  });

  it('paces the stream by ttft and itl, and the non-stream answer waits the same total', async () => {
    const state = { now: 0, sleeps: [] as number[] };
    const timed = new SimulatorBackend({
      now: () => state.now,
      sleep: (ms) => {
        state.sleeps.push(ms);
        state.now += Math.max(0, ms);
        return Promise.resolve();
      },
    });
    const req = { ...request('echo', { messages: [user('a b c')] }), deployment: deployment('echo', 100, 10) };
    for await (const _ of timed.stream({ ...req, deadline: 10_000 })) {
      // consume
    }
    expect(state.sleeps).toEqual([100, 10, 10]);
    state.sleeps.length = 0;
    await timed.complete({ ...req, deadline: state.now + 10_000 });
    expect(state.sleeps).toEqual([120]);
  });
});

const weather = {
  type: 'function',
  function: {
    name: 'get_weather',
    parameters: {
      type: 'object',
      properties: {
        city: { type: 'string' },
        days: { type: 'integer' },
        scale: { type: 'number' },
        metric: { type: 'boolean' },
        hours: { type: 'array', items: { type: 'integer' } },
        extra: { type: 'object' },
        unit: { type: 'string', enum: ['celsius', 'fahrenheit'] },
      },
    },
  },
};
const noArgs = { type: 'function', function: { name: 'ping' } };
const tools = [noArgs, weather];

describe('SimulatorBackend chat: tool calls', () => {
  it('a named tool_choice makes every choice one call to it, arguments a JSON object of the schema', async () => {
    const res = await chat('lorem', {
      messages: [user('weather?')],
      tools,
      tool_choice: { type: 'function', function: { name: 'get_weather' } },
      n: 2,
    });
    expect(res.output).toHaveLength(2);
    for (const c of res.output) {
      expect(c.finish_reason).toBe('tool_calls');
      expect(c.message.content).toBeNull();
      expect(c.message.tool_calls).toHaveLength(1);
      const call = c.message.tool_calls?.[0];
      expect(call).toMatchObject({ type: 'function', function: { name: 'get_weather' } });
      expect(call?.id).toMatch(/^call_[0-9a-f]{24}$/);
      const args = JSON.parse(call?.function.arguments ?? '') as Record<string, unknown>;
      expect(Object.keys(args)).toEqual(['city', 'days', 'scale', 'metric', 'hours', 'extra', 'unit']);
      expect(typeof args.city).toBe('string');
      expect(Number.isInteger(args.days)).toBe(true);
      expect(typeof args.scale).toBe('number');
      expect(args).toMatchObject({ metric: true, hours: [], extra: {}, unit: 'celsius' });
    }
    expect(res.output[0]?.message.tool_calls?.[0]?.id).not.toBe(res.output[1]?.message.tool_calls?.[0]?.id);
    expect(
      await chat('lorem', {
        messages: [user('weather?')],
        tools,
        tool_choice: { type: 'function', function: { name: 'get_weather' } },
        n: 2,
      }),
    ).toEqual(res);
  });

  it('gives a new call id on the next turn of the conversation', async () => {
    const first = [user('go')];
    const a = await chat('echo', { messages: first, tools, tool_choice: 'required' });
    const call = a.output[0]?.message.tool_calls?.[0];
    const next = [
      ...first,
      { role: 'assistant', content: null, tool_calls: [call] },
      { role: 'tool', tool_call_id: call?.id, content: 'pong' },
    ];
    const b = await chat('echo', { messages: next, tools, tool_choice: 'required' });
    expect(b.output[0]?.message.tool_calls?.[0]?.id).not.toBe(call?.id);
    // The tool result's text counts as prompt: go (1) + pong (1).
    expect(b.usage?.prompt_tokens).toBe(2);
  });

  it('"required" calls the first tool; a function without parameters gets "{}"', async () => {
    const res = await chat('echo', { messages: [user('go')], tools, tool_choice: 'required' });
    expect(res.output[0]?.message.tool_calls?.[0]?.function).toEqual({ name: 'ping', arguments: '{}' });
    expect(res.output[0]?.finish_reason).toBe('tool_calls');
  });

  it('a custom tool is accepted and never called; "required" calls the first function tool', async () => {
    const withCustom = [{ type: 'custom', custom: { name: 'grammar' } }, ...tools];
    const text = await chat('echo', { messages: [user('plain')], tools: withCustom });
    expect(text.output[0]?.message.content).toBe('plain');
    const forced = await chat('echo', { messages: [user('go')], tools: withCustom, tool_choice: 'required' });
    expect(forced.output[0]?.message.tool_calls?.[0]?.function.name).toBe('ping');
  });

  it('allowed_tools: mode "required" calls the first allowed function, mode "auto" answers with text', async () => {
    const allowed = (mode: string) => ({
      type: 'allowed_tools',
      allowed_tools: { mode, tools: [{ type: 'function', function: { name: 'get_weather' } }] },
    });
    const forced = await chat('echo', { messages: [user('go')], tools, tool_choice: allowed('required') });
    expect(forced.output[0]?.message.tool_calls?.[0]?.function.name).toBe('get_weather');
    expect(forced.output[0]?.finish_reason).toBe('tool_calls');
    const auto = await chat('echo', { messages: [user('go on')], tools, tool_choice: allowed('auto') });
    expect(auto.output[0]?.message.content).toBe('go on');
  });

  it('"auto", "none" and no tool_choice answer with text', async () => {
    for (const tool_choice of ['auto', 'none', undefined]) {
      const res = await chat('echo', { messages: [user('plain text')], tools, tool_choice });
      expect(res.output[0]?.message).toEqual({ role: 'assistant', content: 'plain text', refusal: null });
    }
  });

  it('streams the call header first, then argument fragments that reassemble to the same JSON', async () => {
    const params = {
      messages: [user('weather?')],
      tools,
      tool_choice: { type: 'function', function: { name: 'get_weather' } },
    };
    const whole = await chat('lorem', params);
    const call = whole.output[0]?.message.tool_calls?.[0];
    const events = await stream('lorem', params);
    const cs = chunks(events);
    expect(cs[0]?.delta).toEqual({
      role: 'assistant',
      content: null,
      tool_calls: [{ index: 0, id: call?.id, type: 'function', function: { name: 'get_weather', arguments: '' } }],
    });
    const middle = cs.slice(1, -1);
    expect(middle.length).toBeGreaterThan(1);
    for (const c of middle) {
      expect(Object.keys(c.delta)).toEqual(['tool_calls']);
      expect(c.delta.tool_calls?.[0]?.index).toBe(0);
      expect(Object.keys(c.delta.tool_calls?.[0]?.function ?? {})).toEqual(['arguments']);
    }
    expect(cs.at(-1)).toEqual({ index: 0, delta: {}, logprobs: null, finish_reason: 'tool_calls' });
    const merged = merge(events).get(0);
    expect(merged?.calls).toEqual([{ id: call?.id, name: 'get_weather', arguments: call?.function.arguments }]);
    expect(events.at(-1)).toMatchObject({ type: 'usage', usage: { completion_tokens: middle.length } });
    expect(whole.usage?.completion_tokens).toBe(middle.length);
  });

  it.each([
    [{ tools, tool_choice: { type: 'function', function: { name: 'nope' } } }, 'tool_choice'],
    [{ tool_choice: 'required' }, 'tool_choice'],
    [{ tools, tool_choice: 'sometimes' }, 'tool_choice'],
    [{ tools: [{ type: 'function' }] }, 'tools'],
  ])('rejects %j with a 400 naming %s', async (params, param) => {
    const err: unknown = await chat('echo', { messages: [user('x')], ...params }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(BackendError);
    expect(err).toMatchObject({ status: 400, type: 'invalid_request_error', param, failover: false });
  });
});

describe('SimulatorBackend chat: invalid parameters', () => {
  it.each([
    [{}, 'messages'],
    [{ messages: [] }, 'messages'],
    [{ messages: ['hi'] }, 'messages'],
    [{ messages: [user(42)] }, 'messages'],
    [{ messages: [user('x')], n: 0 }, 'n'],
    [{ messages: [user('x')], max_completion_tokens: -1 }, 'max_completion_tokens'],
    [{ messages: [user('x')], top_logprobs: 21, logprobs: true }, 'top_logprobs'],
    [{ messages: [user('x')], logprobs: 'yes' }, 'logprobs'],
  ])('rejects %j with a 400 naming %s', async (params, param) => {
    const err: unknown = await chat('echo', params).catch((e: unknown) => e);
    expect(err).toMatchObject({ status: 400, type: 'invalid_request_error', param, failover: false });
  });
});

describe('SimulatorBackend chat: lazy and fair', () => {
  const long = Array.from({ length: 2_048 }, (_, i) => `w${i}`).join(' ');
  const big = { messages: [user(long)], n: 32, max_tokens: 4_096, logprobs: true, top_logprobs: 5 };

  it('streams a large request without holding the event loop, the first chunk at once', async () => {
    let last = performance.now();
    let gap = 0;
    const timer = setInterval(() => {
      const now = performance.now();
      gap = Math.max(gap, now - last);
      last = now;
    }, 2);
    const started = performance.now();
    let first = -1;
    let count = 0;
    try {
      for await (const e of sim.stream(request('echo', big))) {
        if (e.type === 'chunk') {
          count += 1;
          first = first < 0 ? performance.now() - started : first;
        }
      }
    } finally {
      clearInterval(timer);
    }
    // Per choice: the opening delta, 2048 words, the closing delta.
    expect(count).toBe(32 * (2_048 + 2));
    expect(first).toBeLessThan(100);
    expect(Math.max(gap, performance.now() - last)).toBeLessThan(500);
  }, 60_000);

  it.each([true, false])('stops within a slice when cancelled (stream: %s)', async (streamed) => {
    const ctl = new AbortController();
    const reason = new Error('cancelled');
    setTimeout(() => ctl.abort(reason), 20);
    const req = { ...request('echo', big), signal: ctl.signal };
    const run = streamed
      ? (async () => {
          for await (const _ of sim.stream(req)) {
            // consume
          }
        })()
      : sim.complete(req);
    await expect(run).rejects.toBe(reason);
  });
});
