import type OpenAI from 'openai';
import { BadRequestError } from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type ChatCompletion,
  chatChunks,
  chatModels,
  demuxChat,
  expectOpenAIError,
  fakeUpstreamText,
  parseSse,
  probe,
  raw,
  rejection,
  sdk,
  simulatorEcho,
  userSays,
} from '../support/contract-helpers';
import { type FakeUpstream, fakeToolCalls } from '../support/fake-upstream';
import type { Stack } from '../support/stack';
import { startUpstreamStack } from '../support/upstream-stack';

const CHAT = '/v1/chat/completions';

const TOOLS: OpenAI.ChatCompletionFunctionTool[] = [
  {
    type: 'function',
    function: {
      name: 'get_weather',
      description: 'The weather in a city',
      parameters: {
        type: 'object',
        properties: { city: { type: 'string' }, days: { type: 'integer' }, unit: { enum: ['c', 'f'] } },
        required: ['city'],
      },
    },
  },
  { type: 'function', function: { name: 'get_time', parameters: { type: 'object', properties: {} } } },
];

const BACKENDS = [
  { name: 'simulator', model: 'echo', text: simulatorEcho },
  { name: 'upstream', model: 'up', text: fakeUpstreamText },
];

const NAMED = { type: 'function', function: { name: 'get_time' } } as const;
const FORCING = [
  { name: 'tool_choice naming a function', choice: NAMED, fn: 'get_time' },
  { name: 'tool_choice required (the first tool)', choice: 'required', fn: 'get_weather' },
];

/** A conversation with every role: system, developer, user, assistant with a tool call, tool. */
const CONVERSATION = [
  { role: 'system', content: 'You are terse.' },
  { role: 'developer', content: [{ type: 'text', text: 'Answer in one word.' }] },
  { role: 'user', content: 'what weather today', name: 'alice' },
  {
    role: 'assistant',
    content: null,
    tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris"}' } }],
  },
  { role: 'tool', tool_call_id: 'call_1', content: 'sunny, 21 degrees' },
  { role: 'assistant', content: 'Sunny.' },
];

function parsedObject(args: string | undefined): Record<string, unknown> {
  const value: unknown = JSON.parse(args ?? 'null');
  expect(typeof value === 'object' && value !== null && !Array.isArray(value), `arguments ${args}`).toBe(true);
  return value as Record<string, unknown>;
}

/**
 * Contract: chat tools. `tool_choice` naming a function, or `required` (the first tool),
 * gives one tool call (content null, JSON-object arguments, finish_reason tool_calls),
 * streamed as indexed tool_calls deltas the SDK reassembles; `auto`/`none` answer text on
 * the simulator; a conversation with assistant tool calls and tool results is accepted;
 * the upstream receives tools, tool_choice, parallel_tool_calls and response_format as
 * sent and its tool-call deltas are relayed index by index. Malformed tools are 400s whose
 * `param` is the exact path of the fault.
 */
describe('contract: chat tools', () => {
  let upstream: FakeUpstream;
  let stack: Stack;
  let key: string;
  let client: OpenAI;

  beforeAll(async () => {
    ({ upstream, stack, key } = await startUpstreamStack('contract-chat-tools', {}, chatModels));
    client = sdk(stack, key);
  });

  afterAll(async () => {
    await stack?.stop();
    await upstream?.close();
  });

  async function whole(body: Record<string, unknown>): Promise<ChatCompletion> {
    const res = await raw(stack, body, { key, path: CHAT });
    expect(res.status, res.text.slice(0, 500)).toBe(200);
    const json = res.json as ChatCompletion;
    expect(json.object).toBe('chat.completion');
    return json;
  }

  async function stream(body: Record<string, unknown>) {
    const res = await raw(stack, { ...body, stream: true }, { key, path: CHAT });
    expect(res.status, res.text.slice(0, 500)).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/);
    const sse = parseSse(res.text);
    expect(sse.data.at(-1)).toBe('[DONE]');
    expect(sse.errors).toEqual([]);
    expect(sse.events.every((e) => e.object === 'chat.completion.chunk')).toBe(true);
    return demuxChat(chatChunks(sse));
  }

  /** The upstream's record of the request carrying `mark`. */
  function forwarded(mark: { probe: string }): Record<string, unknown> | undefined {
    return upstream.requests.find((r) => r.body.probe === mark.probe)?.body;
  }

  describe.each(BACKENDS)('$name', (b) => {
    const ask = (extra: Record<string, unknown>) => ({
      model: b.model,
      messages: userSays('weather in paris'),
      tools: TOOLS,
      ...extra,
    });

    it.each(FORCING)('non-stream, $name: one tool call, content null, finish_reason tool_calls', async (f) => {
      const res = await whole(ask({ tool_choice: f.choice }));
      expect(res.choices).toHaveLength(1);
      const c = res.choices[0];
      expect(c?.finish_reason).toBe('tool_calls');
      expect(c?.message.role).toBe('assistant');
      expect(c?.message.content).toBeNull();
      expect(c?.message.tool_calls).toHaveLength(1);
      const call = c?.message.tool_calls?.[0];
      expect(Object.keys(call ?? {}).sort()).toEqual(['function', 'id', 'type']);
      expect(call?.id).toMatch(/^\S+$/);
      expect(call?.type).toBe('function');
      expect(call?.function.name).toBe(f.fn);
      const args = parsedObject(call?.function.arguments);
      if (b.model === 'up') {
        expect(call?.function.arguments).toBe(fakeToolCalls(ask({ tool_choice: f.choice }))[0]?.arguments);
      } else if (f.fn === 'get_weather') {
        // The simulator fills in one value of each property's type.
        expect(typeof args.city).toBe('string');
        expect(Number.isInteger(args.days)).toBe(true);
        expect(args.unit).toBe('c');
      } else {
        expect(args).toEqual({});
      }
      expect(res.usage.completion_tokens).toBeGreaterThan(0);
    });

    it.each(FORCING)('stream, $name: role first, indexed tool_calls deltas joining to the call', async (f) => {
      const body = ask({ tool_choice: f.choice });
      const reference = (await whole(body)).choices[0]?.message.tool_calls?.[0];
      const merged = await stream(body);
      expect([...merged.keys()]).toEqual([0]);
      const m = merged.get(0);
      expect(m?.roleFirst).toBe(true);
      expect(m?.roles).toEqual(['assistant']);
      expect(m?.finishes).toBe(1);
      expect(m?.finish_reason).toBe('tool_calls');
      expect(m?.deltaAfterFinish).toBe(false);
      expect(m?.hasContent).toBe(false);
      expect([...(m?.toolCalls.keys() ?? [])]).toEqual([0]);
      // The first delta of the call has id, type and name; the others only append arguments.
      expect(m?.toolCallHeadsMissing).toBe(0);
      expect(m?.toolCallHeadsRepeated).toBe(0);
      const call = m?.toolCalls.get(0);
      expect(call?.type).toBe('function');
      expect(call?.name).toBe(f.fn);
      expect(call?.id).toBe(reference?.id);
      expect(call?.arguments).toBe(reference?.function.arguments);
      parsedObject(call?.arguments);
      if (f.fn === 'get_weather') {
        // Long enough arguments arrive over several deltas.
        expect(call?.deltas).toBeGreaterThan(2);
      }
    });

    it('a tool-call answer reports the same usage streamed and not', async () => {
      const body = ask({ tool_choice: 'required' });
      const res = await whole(body);
      expect(res.usage.completion_tokens).toBeGreaterThan(0);
      expect(res.usage.total_tokens).toBe(res.usage.prompt_tokens + res.usage.completion_tokens);
      const s = await raw(
        stack,
        { ...body, stream: true, stream_options: { include_usage: true } },
        { key, path: CHAT },
      );
      const usage = parseSse(s.text).usageChunks;
      expect(usage).toHaveLength(1);
      expect(usage[0]?.usage).toEqual(res.usage);
    });

    it('the SDK reassembles the streamed tool call: raw iteration and the stream helper', async () => {
      const params = {
        model: b.model,
        messages: userSays('weather in paris'),
        tools: TOOLS,
        tool_choice: { type: 'function' as const, function: { name: 'get_weather' } },
      };
      const res = await client.chat.completions.create(params);
      const reference = res.choices[0]?.message.tool_calls?.[0];
      expect(reference?.type).toBe('function');
      // Raw iteration, accumulating by tool-call index as a client does.
      const s = await client.chat.completions.create({ ...params, stream: true });
      const calls = new Map<number, { id?: string; name?: string; arguments: string }>();
      let finish: string | null = null;
      for await (const chunk of s) {
        for (const c of chunk.choices) {
          for (const t of c.delta.tool_calls ?? []) {
            const call = calls.get(t.index) ?? { arguments: '' };
            call.id ??= t.id;
            call.name ??= t.function?.name;
            call.arguments += t.function?.arguments ?? '';
            calls.set(t.index, call);
          }
          finish = c.finish_reason ?? finish;
        }
      }
      expect(finish).toBe('tool_calls');
      expect([...calls.keys()]).toEqual([0]);
      expect(calls.get(0)).toEqual({
        id: reference?.id,
        name: 'get_weather',
        arguments: reference?.type === 'function' ? reference.function.arguments : undefined,
      });
      // The stream helper.
      const helper = client.chat.completions.stream(params);
      const done: { name: string; arguments: string }[] = [];
      helper.on('tool_calls.function.arguments.done', (e) => done.push({ name: e.name, arguments: e.arguments }));
      const final = await helper.finalChatCompletion();
      expect(final.choices[0]?.finish_reason).toBe('tool_calls');
      const streamed = final.choices[0]?.message.tool_calls?.[0];
      expect(streamed).toEqual(reference);
      expect(done).toHaveLength(1);
      expect(done[0]?.name).toBe('get_weather');
      parsedObject(done[0]?.arguments);
    });

    it.each(['none', 'auto'])(
      'tool_choice %s: a text answer even with tools (the fake upstream, like the simulator)',
      async (choice) => {
        const res = await whole(ask({ tool_choice: choice }));
        expect(res.choices[0]?.finish_reason).toBe('stop');
        expect(res.choices[0]?.message.content).toBe(b.text('weather in paris'));
        expect(res.choices[0]?.message.tool_calls ?? []).toEqual([]);
        const merged = await stream(ask({ tool_choice: choice }));
        expect(merged.get(0)?.content).toBe(b.text('weather in paris'));
        expect(merged.get(0)?.toolCalls.size).toBe(0);
      },
    );

    it('multi-turn: assistant tool_calls and tool results are accepted; the last user message is answered', async () => {
      const res = await whole({ model: b.model, messages: [...CONVERSATION, ...userSays('and tomorrow')] });
      expect(res.choices[0]?.message.content).toBe(b.text('and tomorrow'));
      expect(res.choices[0]?.finish_reason).toBe('stop');
      const merged = await stream({ model: b.model, messages: CONVERSATION, tools: TOOLS });
      expect(merged.get(0)?.content).toBe(b.text('what weather today'));
    });

    it('the SDK tool loop: call, answer with a tool message, get text back', async () => {
      const first = await client.chat.completions.create({
        model: b.model,
        messages: userSays('weather in paris'),
        tools: TOOLS,
        tool_choice: 'required',
      });
      const message = first.choices[0]?.message;
      const call = message?.tool_calls?.[0];
      expect(call?.type).toBe('function');
      const second = await client.chat.completions.create({
        model: b.model,
        tools: TOOLS,
        messages: [
          ...userSays('weather in paris'),
          message as OpenAI.ChatCompletionAssistantMessageParam,
          { role: 'tool', tool_call_id: call?.id ?? '', content: '{"temp":21}' },
          ...userSays('thanks'),
        ],
      });
      expect(second.choices[0]?.finish_reason).toBe('stop');
      expect(second.choices[0]?.message.content).toBe(b.text('thanks'));
    });
  });

  describe('simulator', () => {
    it('without tool_choice a request with tools answers text', async () => {
      const res = await whole({ model: 'echo', messages: userSays('just talk'), tools: TOOLS });
      expect(res.choices[0]?.finish_reason).toBe('stop');
      expect(res.choices[0]?.message.content).toBe('just talk');
    });

    it('n=2 with a named tool: a tool call on every choice', async () => {
      const res = await whole({ model: 'echo', messages: userSays('x'), tools: TOOLS, tool_choice: NAMED, n: 2 });
      expect(res.choices.map((c) => [c.index, c.finish_reason, c.message.tool_calls?.[0]?.function.name])).toEqual([
        [0, 'tool_calls', 'get_time'],
        [1, 'tool_calls', 'get_time'],
      ]);
      const merged = await stream({ model: 'echo', messages: userSays('x'), tools: TOOLS, tool_choice: NAMED, n: 2 });
      expect([...merged.keys()].sort()).toEqual([0, 1]);
      expect([...merged.values()].map((m) => m.toolCalls.get(0)?.name)).toEqual(['get_time', 'get_time']);
    });

    it('the same request gives the same call id; the next turn a new one', async () => {
      const body = { model: 'echo', messages: userSays('x'), tools: TOOLS, tool_choice: NAMED };
      const [a, again] = await Promise.all([whole(body), whole(body)]);
      const id = a.choices[0]?.message.tool_calls?.[0]?.id;
      expect(again.choices[0]?.message.tool_calls?.[0]?.id).toBe(id);
      const next = await whole({
        ...body,
        messages: [...body.messages, { role: 'assistant', content: 'y' }, ...userSays('z')],
      });
      expect(next.choices[0]?.message.tool_calls?.[0]?.id).not.toBe(id);
    });

    it('a custom tool beside the function tools is accepted; required calls the first function tool', async () => {
      const tools = [{ type: 'custom', custom: { name: 'grammar_tool' } }, ...TOOLS];
      const text = await whole({ model: 'echo', messages: userSays('plain'), tools });
      expect(text.choices[0]?.message.content).toBe('plain');
      const forced = await whole({ model: 'echo', messages: userSays('plain'), tools, tool_choice: 'required' });
      expect(forced.choices[0]?.finish_reason).toBe('tool_calls');
      expect(forced.choices[0]?.message.tool_calls?.[0]?.function.name).toBe('get_weather');
    });

    it('tool_choice allowed_tools: mode required calls the first allowed function, mode auto answers text', async () => {
      const allowed = (mode: string) => ({
        type: 'allowed_tools',
        allowed_tools: { mode, tools: [{ type: 'function', function: { name: 'get_time' } }] },
      });
      const forced = await whole({
        model: 'echo',
        messages: userSays('x'),
        tools: TOOLS,
        tool_choice: allowed('required'),
      });
      expect(forced.choices[0]?.finish_reason).toBe('tool_calls');
      expect(forced.choices[0]?.message.tool_calls?.[0]?.function.name).toBe('get_time');
      const auto = await whole({
        model: 'echo',
        messages: userSays('x y'),
        tools: TOOLS,
        tool_choice: allowed('auto'),
      });
      expect(auto.choices[0]?.finish_reason).toBe('stop');
      expect(auto.choices[0]?.message.content).toBe('x y');
    });

    it.each([
      { name: 'text', response_format: { type: 'text' } },
      { name: 'json_object', response_format: { type: 'json_object' } },
      {
        name: 'json_schema',
        response_format: {
          type: 'json_schema',
          json_schema: { name: 'answer', strict: true, schema: { type: 'object', properties: {} } },
        },
      },
    ])('accepts response_format $name', async ({ response_format }) => {
      const res = await whole({ model: 'echo', messages: userSays('ok'), response_format });
      expect(res.choices[0]?.message.content).toBe('ok');
    });

    it.each([true, false])('accepts parallel_tool_calls %s', async (parallel) => {
      const res = await whole({
        model: 'echo',
        messages: userSays('ok'),
        tools: TOOLS,
        parallel_tool_calls: parallel,
        tool_choice: NAMED,
      });
      expect(res.choices[0]?.message.tool_calls).toHaveLength(1);
    });
  });

  describe('upstream', () => {
    it('several tool calls (fake_tool_calls): distinct ids, indexes 0 and 1, relayed streamed and not', async () => {
      const body = {
        model: 'up',
        messages: userSays('both please'),
        tools: TOOLS,
        tool_choice: 'auto',
        parallel_tool_calls: true,
        fake_tool_calls: 2,
      };
      const expected = fakeToolCalls(body);
      const res = await whole(body);
      const calls = res.choices[0]?.message.tool_calls ?? [];
      expect(calls.map((c) => c.function.name)).toEqual(['get_weather', 'get_time']);
      expect(calls.map((c) => c.id)).toEqual(expected.map((c) => c.id));
      expect(calls.map((c) => c.function.arguments)).toEqual(expected.map((c) => c.arguments));
      expect(res.choices[0]?.finish_reason).toBe('tool_calls');
      const m = (await stream(body)).get(0);
      expect([...(m?.toolCalls.keys() ?? [])].sort()).toEqual([0, 1]);
      expect(m?.roleFirst).toBe(true);
      expect(m?.toolCallHeadsMissing).toBe(0);
      expect(m?.toolCallHeadsRepeated).toBe(0);
      expect(m?.toolCalls.get(0)).toMatchObject({ id: expected[0]?.id, name: 'get_weather' });
      expect(m?.toolCalls.get(0)?.arguments).toBe(expected[0]?.arguments);
      expect(m?.toolCalls.get(1)).toMatchObject({ id: expected[1]?.id, name: 'get_time' });
      expect(m?.toolCalls.get(1)?.arguments).toBe(expected[1]?.arguments);
      expect(m?.toolCalls.get(1)?.deltas).toBeGreaterThan(1);
      expect(m?.finish_reason).toBe('tool_calls');
    });

    it('the SDK stream helper assembles the relayed parallel calls', async () => {
      const body = {
        model: 'up',
        messages: userSays('both please'),
        tools: TOOLS,
        fake_tool_calls: 2,
      };
      const final = await client.chat.completions.stream(body).finalChatCompletion();
      const calls = final.choices[0]?.message.tool_calls ?? [];
      expect(calls.map((c) => (c.type === 'function' ? [c.id, c.function.name, c.function.arguments] : []))).toEqual(
        fakeToolCalls(body).map((c) => [c.id, c.name, c.arguments]),
      );
    });

    it('receives messages (every role, tool calls, tool results, an image_url part) untouched', async () => {
      const messages = [
        ...CONVERSATION,
        {
          role: 'user',
          content: [
            { type: 'text', text: 'look at this' },
            { type: 'image_url', image_url: { url: 'https://example.com/cat.png', detail: 'high' } },
          ],
        },
      ];
      const mark = probe();
      const res = await whole({ model: 'up', messages, ...mark });
      expect(res.choices[0]?.message.content).toBe(fakeUpstreamText('look at this'));
      expect(forwarded(mark)?.messages).toEqual(messages);
    });

    it('custom tools, a custom tool_choice and an earlier custom tool call are forwarded as sent', async () => {
      const mark = probe();
      const tools = [...TOOLS, { type: 'custom', custom: { name: 'sql', description: 'free-form SQL' } }];
      const messages = [
        ...userSays('count rows'),
        {
          role: 'assistant',
          tool_calls: [{ id: 'call_c', type: 'custom', custom: { name: 'sql', input: 'SELECT 1' } }],
        },
        { role: 'tool', tool_call_id: 'call_c', content: '1' },
        ...userSays('and now'),
      ];
      const tool_choice = { type: 'custom', custom: { name: 'sql' } };
      const res = await whole({ model: 'up', messages, tools, tool_choice, ...mark });
      expect(res.choices[0]?.message.content).toBe(fakeUpstreamText('and now'));
      expect(forwarded(mark)).toMatchObject({ messages, tools, tool_choice });
      // The simulator accepts the same conversation (it never calls a custom tool itself).
      const sim = await whole({ model: 'echo', messages, tools });
      expect(sim.choices[0]?.message.content).toBe('and now');
    });

    it.each([
      {
        name: 'json_schema',
        response_format: {
          type: 'json_schema',
          json_schema: { name: 'w', strict: true, schema: { type: 'object', properties: { t: { type: 'number' } } } },
        },
      },
      { name: 'json_object', response_format: { type: 'json_object' } },
    ])(
      'receives tools, tool_choice, parallel_tool_calls and response_format ($name) as sent, streamed and not',
      async ({ response_format }) => {
        const sent = {
          tools: TOOLS,
          tool_choice: { type: 'function', function: { name: 'get_weather' } },
          parallel_tool_calls: false,
          response_format,
        };
        for (const streamed of [false, true]) {
          const mark = probe();
          const body = { model: 'up', messages: userSays('w'), ...sent, ...mark };
          const call = streamed
            ? (await stream(body)).get(0)?.toolCalls.get(0)?.name
            : (await whole(body)).choices[0]?.message.tool_calls?.[0]?.function.name;
          expect(call).toBe('get_weather');
          const seen = forwarded(mark);
          expect(seen?.stream ?? false).toBe(streamed);
          for (const [field, value] of Object.entries(sent)) {
            expect(seen?.[field], `${field} (stream ${streamed})`).toEqual(value);
          }
        }
      },
    );
  });

  describe('validation of tools and tool_choice', () => {
    const base = { model: 'echo', messages: userSays('x') };
    const fn = (f: Record<string, unknown>) => ({ type: 'function', function: f });

    it.each([
      {
        name: 'tool_choice naming a function not in tools',
        body: { tools: TOOLS, tool_choice: { type: 'function', function: { name: 'nope' } } },
        param: 'tool_choice.function.name',
        message: /nope/,
      },
      { name: 'tool_choice required without tools', body: { tool_choice: 'required' }, param: 'tool_choice' },
      {
        name: 'tool_choice naming a custom tool not in tools',
        body: { tools: TOOLS, tool_choice: { type: 'custom', custom: { name: 'get_time' } } },
        param: 'tool_choice.custom.name',
        message: /get_time/,
      },
      {
        name: 'tool_choice allowed_tools without its mode',
        body: { tools: TOOLS, tool_choice: { type: 'allowed_tools', allowed_tools: { tools: [NAMED] } } },
        param: 'tool_choice.allowed_tools.mode',
      },
      {
        name: 'an assistant tool call of an unknown type',
        body: {
          messages: [
            { role: 'user', content: 'x' },
            { role: 'assistant', tool_calls: [{ id: 'c', type: 'retrieval', retrieval: {} }] },
          ],
        },
        param: 'messages[1].tool_calls[0].type',
      },
      {
        name: 'an assistant custom tool call without its input',
        body: {
          messages: [
            { role: 'user', content: 'x' },
            { role: 'assistant', tool_calls: [{ id: 'c', type: 'custom', custom: { name: 'sql' } }] },
          ],
        },
        param: 'messages[1].tool_calls[0].custom.input',
      },

      { name: 'tool_choice naming a function without tools', body: { tool_choice: NAMED }, param: 'tool_choice' },
      { name: 'tool_choice an unknown string', body: { tools: TOOLS, tool_choice: 'sometimes' }, param: 'tool_choice' },
      { name: 'tool_choice a number', body: { tools: TOOLS, tool_choice: 3 }, param: 'tool_choice' },
      {
        name: 'tool_choice without its function',
        body: { tools: TOOLS, tool_choice: { type: 'function' } },
        param: 'tool_choice.function',
        message: /Missing required parameter: 'tool_choice\.function'/,
      },
      {
        name: 'tool_choice of an unknown type',
        body: { tools: TOOLS, tool_choice: { type: 'magic' } },
        param: 'tool_choice.type',
      },
      { name: 'tools not an array', body: { tools: { type: 'function' } }, param: 'tools' },
      {
        name: 'a tool without a function name',
        body: { tools: [fn({ description: 'x' })] },
        param: 'tools[0].function.name',
        message: /Missing required parameter: 'tools\[0\]\.function\.name'/,
      },
      {
        name: 'a tool name that is not a string',
        body: { tools: [TOOLS[0], fn({ name: 42 })] },
        param: 'tools[1].function.name',
      },
      {
        name: 'a tool name with a space',
        body: { tools: [fn({ name: 'get weather' })] },
        param: 'tools[0].function.name',
      },
      {
        name: 'a tool name of 65 characters',
        body: { tools: [fn({ name: 'x'.repeat(65) })] },
        param: 'tools[0].function.name',
      },
      {
        name: 'a tool of an unknown type',
        body: { tools: [{ type: 'retrieval', function: { name: 'f' } }] },
        param: 'tools[0].type',
        message: /'tools\[0\]\.type'/,
      },
      { name: 'a tool without a type', body: { tools: [{ function: { name: 'f' } }] }, param: 'tools[0].type' },
      { name: 'a tool without its function', body: { tools: [{ type: 'function' }] }, param: 'tools[0].function' },
      { name: 'a tool that is a string', body: { tools: ['get_time'] }, param: 'tools[0]' },
      {
        name: 'tool parameters that are not an object',
        body: { tools: [fn({ name: 'f', parameters: 'none' })] },
        param: 'tools[0].function.parameters',
        message: /'tools\[0\]\.function\.parameters'/,
      },
      {
        name: 'a tool description that is not a string',
        body: { tools: [TOOLS[1], fn({ name: 'f', description: 1 })] },
        param: 'tools[1].function.description',
      },
      {
        name: 'tool strict not a boolean',
        body: { tools: [fn({ name: 'f', strict: 'yes' })] },
        param: 'tools[0].function.strict',
      },
      {
        name: 'over 128 tools',
        body: { tools: Array.from({ length: 129 }, (_, i) => fn({ name: `f${i}` })) },
        param: 'tools',
        message: /128/,
      },
      {
        name: 'parallel_tool_calls not a boolean',
        body: { tools: TOOLS, parallel_tool_calls: 'yes' },
        param: 'parallel_tool_calls',
      },
      {
        name: 'response_format of an unknown type',
        body: { response_format: { type: 'xml' } },
        param: 'response_format.type',
      },
      { name: 'response_format a string', body: { response_format: 'json' }, param: 'response_format' },
      {
        name: 'response_format json_schema without json_schema',
        body: { response_format: { type: 'json_schema' } },
        param: 'response_format.json_schema',
      },
      {
        name: 'response_format json_schema without a name',
        body: { response_format: { type: 'json_schema', json_schema: { schema: {} } } },
        param: 'response_format.json_schema.name',
      },
      {
        name: 'response_format json_schema whose schema is not an object',
        body: { response_format: { type: 'json_schema', json_schema: { name: 'a', schema: [] } } },
        param: 'response_format.json_schema.schema',
      },
      {
        name: 'an assistant tool call without a function',
        body: {
          messages: [
            { role: 'user', content: 'x' },
            { role: 'assistant', content: null, tool_calls: [{ id: 'c', type: 'function' }] },
          ],
        },
        param: 'messages[1].tool_calls[0].function',
      },
      {
        name: 'an assistant tool call whose arguments are not a string',
        body: {
          messages: [
            { role: 'user', content: 'x' },
            {
              role: 'assistant',
              tool_calls: [{ id: 'c', type: 'function', function: { name: 'f', arguments: { a: 1 } } }],
            },
          ],
        },
        param: 'messages[1].tool_calls[0].function.arguments',
      },
      {
        name: 'a tool message without tool_call_id',
        body: {
          messages: [
            { role: 'user', content: 'x' },
            { role: 'tool', content: 'r' },
          ],
        },
        param: 'messages[1].tool_call_id',
      },
    ])('400 for $name (param $param)', async ({ body, param, message }) => {
      const res = await raw(stack, { ...base, ...body }, { key, path: CHAT });
      expectOpenAIError(res, 400, { type: 'invalid_request_error', param, code: null, message });
    });

    it('the SDK raises BadRequestError naming the tool field', async () => {
      const err = await rejection(
        client.chat.completions.create({
          model: 'echo',
          messages: userSays('x'),
          tools: [{ type: 'function', function: { name: 'bad name' } }],
        }),
      );
      expect(err).toBeInstanceOf(BadRequestError);
      expect(err.param).toBe('tools[0].function.name');
      const undeclared = await rejection(
        client.chat.completions.create({
          model: 'echo',
          messages: userSays('x'),
          tools: TOOLS,
          tool_choice: { type: 'function', function: { name: 'not_declared' } },
          stream: true,
        }),
      );
      expect(undeclared).toBeInstanceOf(BadRequestError);
      expect(undeclared.param).toBe('tool_choice.function.name');
    });

    it('an invalid tool request never reaches the upstream', async () => {
      const mark = probe();
      const res = await raw(
        stack,
        {
          model: 'up',
          messages: userSays('x'),
          tools: TOOLS,
          tool_choice: { type: 'function', function: { name: 'nope' } },
          ...mark,
        },
        { key, path: CHAT },
      );
      expect(res.status).toBe(400);
      await new Promise((r) => setTimeout(r, 200));
      expect(forwarded(mark)).toBeUndefined();
    });
  });
});
