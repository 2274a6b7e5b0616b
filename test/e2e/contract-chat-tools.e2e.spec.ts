import type OpenAI from 'openai';
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
  type RawResponse,
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
      parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] },
    },
  },
  { type: 'function', function: { name: 'get_time', parameters: { type: 'object', properties: {} } } },
];

const BACKENDS = [
  { name: 'simulator', model: 'echo', text: simulatorEcho },
  { name: 'upstream', model: 'up', text: fakeUpstreamText },
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
 * Contract: chat tools and messages. `tool_choice` naming a function, or `required` (the
 * first tool), gives one tool call (content null, JSON-object arguments, finish_reason
 * tool_calls), streamed as indexed tool_calls deltas; several upstream tool calls keep their
 * indexes; `auto`/`none` leave the simulator answering text. Every role and content parts
 * (text, image_url) are accepted, and the upstream receives messages, tools, tool_choice,
 * parallel_tool_calls and response_format as sent. Malformed tools are 400s naming the field.
 */
describe('contract: chat tools, roles and content parts', () => {
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
    expect(res.status, res.text).toBe(200);
    return res.json as ChatCompletion;
  }

  async function stream(body: Record<string, unknown>) {
    const res = await raw(stack, { ...body, stream: true }, { key, path: CHAT });
    expect(res.status, res.text).toBe(200);
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

    it.each([
      {
        name: 'tool_choice naming a function',
        choice: { type: 'function', function: { name: 'get_time' } },
        fn: 'get_time',
      },
      { name: 'tool_choice required (the first tool)', choice: 'required', fn: 'get_weather' },
    ])('non-stream, $name: one tool call, content null, finish_reason tool_calls', async ({ choice, fn }) => {
      const res = await whole(ask({ tool_choice: choice }));
      const c = res.choices[0];
      expect(c?.finish_reason).toBe('tool_calls');
      expect(c?.message.role).toBe('assistant');
      expect(c?.message.content).toBeNull();
      expect(c?.message.tool_calls).toHaveLength(1);
      const call = c?.message.tool_calls?.[0];
      expect(Object.keys(call ?? {}).sort()).toEqual(['function', 'id', 'type']);
      expect(call?.id).toMatch(/^\S+$/);
      expect(call?.type).toBe('function');
      expect(call?.function.name).toBe(fn);
      parsedObject(call?.function.arguments);
      if (b.model === 'up') {
        expect(call?.function.arguments).toBe(fakeToolCalls({ ...ask({ tool_choice: choice }) })[0]?.arguments);
      }
      expect(res.usage.completion_tokens).toBeGreaterThan(0);
    });

    it.each([
      {
        name: 'tool_choice naming a function',
        choice: { type: 'function', function: { name: 'get_time' } },
        fn: 'get_time',
      },
      { name: 'tool_choice required', choice: 'required', fn: 'get_weather' },
    ])(
      'stream, $name: role first, indexed tool_calls deltas, arguments join to the JSON object',
      async ({ choice, fn }) => {
        const body = ask({ tool_choice: choice });
        const merged = await stream(body);
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
        expect(call?.name).toBe(fn);
        expect(call?.id).toMatch(/^\S+$/);
        parsedObject(call?.arguments);
        if (b.model === 'up') {
          expect(call?.arguments).toBe(fakeToolCalls(body)[0]?.arguments);
          // The upstream split the arguments over several chunks, and so does the relay.
          expect(call?.deltas).toBeGreaterThan(2);
        }
      },
    );

    it('tool_choice none: a text answer even with tools', async () => {
      const res = await whole(ask({ tool_choice: 'none' }));
      expect(res.choices[0]?.finish_reason).toBe('stop');
      expect(res.choices[0]?.message.content).toBe(b.text('weather in paris'));
      expect(res.choices[0]?.message.tool_calls ?? []).toEqual([]);
    });

    it('the SDK: create with a named tool, and the stream helper finalChatCompletion / arguments.done', async () => {
      const params = {
        model: b.model,
        messages: userSays('weather in paris'),
        tools: TOOLS,
        tool_choice: { type: 'function' as const, function: { name: 'get_weather' } },
      };
      const res = await client.chat.completions.create(params);
      const call = res.choices[0]?.message.tool_calls?.[0];
      expect(call?.type).toBe('function');
      expect(call?.type === 'function' ? call.function.name : undefined).toBe('get_weather');
      const s = client.chat.completions.stream(params);
      const done: { name: string; arguments: string }[] = [];
      s.on('tool_calls.function.arguments.done', (e) => done.push({ name: e.name, arguments: e.arguments }));
      const final = await s.finalChatCompletion();
      expect(final.choices[0]?.finish_reason).toBe('tool_calls');
      const streamed = final.choices[0]?.message.tool_calls?.[0];
      expect(streamed?.type === 'function' ? streamed.function.name : undefined).toBe('get_weather');
      expect(done).toHaveLength(1);
      expect(done[0]?.name).toBe('get_weather');
      parsedObject(done[0]?.arguments);
      expect((await s.finalFunctionToolCall())?.name).toBe('get_weather');
    });

    it('accepts every role: system, developer, user (named), assistant with tool_calls, tool', async () => {
      const res = await whole({ model: b.model, messages: [...CONVERSATION, ...userSays('and tomorrow')] });
      expect(res.choices[0]?.message.content).toBe(b.text('and tomorrow'));
      expect(res.choices[0]?.finish_reason).toBe('stop');
      // The last user message is what the answer repeats, even when it is not the last message.
      const after = await whole({ model: b.model, messages: CONVERSATION });
      expect(after.choices[0]?.message.content).toBe(b.text('what weather today'));
      const merged = await stream({ model: b.model, messages: CONVERSATION });
      expect(merged.get(0)?.content).toBe(b.text('what weather today'));
    });

    it('text content parts are read as the message text; an image_url part is accepted', async () => {
      const parts = [
        { type: 'text', text: 'alpha beta' },
        { type: 'text', text: 'gamma' },
      ];
      const res = await whole({ model: b.model, messages: [{ role: 'user', content: parts }] });
      expect(res.choices[0]?.message.content).toBe(b.text('alpha beta gamma'));
      const withImage = await whole({
        model: b.model,
        messages: [
          {
            role: 'user',
            content: [
              { type: 'text', text: 'describe this' },
              { type: 'image_url', image_url: { url: 'data:image/png;base64,iVBORw0KGgo=', detail: 'low' } },
            ],
          },
        ],
      });
      expect(withImage.choices[0]?.message.content).toBe(b.text('describe this'));
    });
  });

  describe('simulator', () => {
    it('tool_choice auto answers with text (only a named or required choice makes a tool call)', async () => {
      for (const extra of [{ tool_choice: 'auto' }, {}]) {
        const res = await whole({ model: 'echo', messages: userSays('just talk'), tools: TOOLS, ...extra });
        expect(res.choices[0]?.finish_reason).toBe('stop');
        expect(res.choices[0]?.message.content).toBe(' just talk');
      }
    });

    it('n=2 with a named tool: a tool call on every choice', async () => {
      const res = await whole({
        model: 'echo',
        messages: userSays('x'),
        tools: TOOLS,
        tool_choice: { type: 'function', function: { name: 'get_time' } },
        n: 2,
      });
      expect(res.choices.map((c) => [c.index, c.finish_reason, c.message.tool_calls?.[0]?.function.name])).toEqual([
        [0, 'tool_calls', 'get_time'],
        [1, 'tool_calls', 'get_time'],
      ]);
    });

    it('accepts response_format text, json_object and json_schema, and parallel_tool_calls', async () => {
      for (const extra of [
        { response_format: { type: 'text' } },
        { response_format: { type: 'json_object' } },
        {
          response_format: {
            type: 'json_schema',
            json_schema: { name: 'answer', strict: true, schema: { type: 'object', properties: {} } },
          },
        },
        { tools: TOOLS, parallel_tool_calls: false },
        { tools: TOOLS, parallel_tool_calls: true, tool_choice: 'auto' },
      ]) {
        const res = await raw(stack, { model: 'echo', messages: userSays('ok'), ...extra }, { key, path: CHAT });
        expect(res.status, `${JSON.stringify(extra)}: ${res.text}`).toBe(200);
      }
    });
  });

  describe('upstream', () => {
    it('several tool calls (parallel): distinct ids, indexes 0 and 1, streamed and not', async () => {
      const body = {
        model: 'up',
        messages: userSays('both please'),
        tools: TOOLS,
        tool_choice: 'auto',
        parallel_tool_calls: true,
        fake_tool_calls: 2,
      };
      const res = await whole(body);
      const calls = res.choices[0]?.message.tool_calls ?? [];
      expect(calls.map((c) => c.function.name)).toEqual(['get_weather', 'get_time']);
      expect(new Set(calls.map((c) => c.id)).size).toBe(2);
      expect(calls.map((c) => c.function.arguments)).toEqual(fakeToolCalls(body).map((c) => c.arguments));
      expect(res.choices[0]?.finish_reason).toBe('tool_calls');
      const merged = await stream(body);
      const m = merged.get(0);
      expect([...(m?.toolCalls.keys() ?? [])].sort()).toEqual([0, 1]);
      expect(m?.toolCallHeadsMissing).toBe(0);
      expect(m?.toolCallHeadsRepeated).toBe(0);
      expect(m?.toolCalls.get(0)?.name).toBe('get_weather');
      expect(m?.toolCalls.get(1)?.name).toBe('get_time');
      expect(m?.toolCalls.get(1)?.arguments).toBe(fakeToolCalls(body)[1]?.arguments);
      expect(m?.finish_reason).toBe('tool_calls');
    });

    it('forwards messages (every role, content parts, image_url) untouched', async () => {
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

    it('forwards tools, tool_choice, parallel_tool_calls and response_format as sent', async () => {
      const sent = {
        tools: TOOLS,
        tool_choice: { type: 'function', function: { name: 'get_weather' } },
        parallel_tool_calls: false,
        response_format: {
          type: 'json_schema',
          json_schema: {
            name: 'weather',
            strict: true,
            schema: { type: 'object', properties: { t: { type: 'number' } } },
          },
        },
      };
      for (const streamed of [false, true]) {
        const mark = probe();
        const body = { model: 'up', messages: userSays('w'), ...sent, ...mark };
        if (streamed) {
          await stream(body);
        } else {
          await whole(body);
        }
        expect(forwarded(mark), `stream ${streamed}`).toMatchObject(sent);
        expect(forwarded(mark)?.tools).toEqual(TOOLS);
      }
    });
  });

  describe('validation of tools and tool choice', () => {
    const base = { model: 'echo', messages: userSays('x') };
    const paramOf = (res: RawResponse) => expectOpenAIError(res, 400, { type: 'invalid_request_error' }).param;

    it.each([
      {
        name: 'tool_choice naming a function not in tools',
        body: { tools: TOOLS, tool_choice: { type: 'function', function: { name: 'nope' } } },
        param: /^tool_choice/,
        message: /nope/,
      },
      { name: 'tool_choice required without tools', body: { tool_choice: 'required' }, param: /^tool_choice$/ },
      {
        name: 'tool_choice naming a function without tools',
        body: { tool_choice: { type: 'function', function: { name: 'get_time' } } },
        param: /^tool_choice/,
      },
      {
        name: 'tool_choice an unknown string',
        body: { tools: TOOLS, tool_choice: 'sometimes' },
        param: /^tool_choice$/,
      },
      {
        name: 'tool_choice without its function',
        body: { tools: TOOLS, tool_choice: { type: 'function' } },
        param: /^tool_choice/,
      },
      { name: 'tools not an array', body: { tools: { type: 'function' } }, param: /^tools$/ },
      {
        name: 'a tool without a function name',
        body: { tools: [{ type: 'function', function: { description: 'x' } }] },
        param: /^tools\[0\]\.function\.name$/,
      },
      {
        name: 'a tool name that is not a string',
        body: { tools: [TOOLS[0], { type: 'function', function: { name: 42 } }] },
        param: /^tools\[1\]\.function\.name$/,
      },
      {
        name: 'a tool of an unknown type',
        body: { tools: [{ type: 'retrieval', function: { name: 'f' } }] },
        param: /^tools\[0\]\.type$/,
      },
      {
        name: 'tool parameters that are not an object',
        body: { tools: [{ type: 'function', function: { name: 'f', parameters: 'none' } }] },
        param: /^tools\[0\]\.function\.parameters$/,
      },
      {
        name: 'parallel_tool_calls not a boolean',
        body: { tools: TOOLS, parallel_tool_calls: 'yes' },
        param: /^parallel_tool_calls$/,
      },
      {
        name: 'response_format of an unknown type',
        body: { response_format: { type: 'xml' } },
        param: /^response_format/,
      },
      {
        name: 'response_format json_schema without its schema object',
        body: { response_format: { type: 'json_schema' } },
        param: /^response_format/,
      },
      {
        name: 'an assistant tool call without a function',
        body: {
          messages: [
            { role: 'user', content: 'x' },
            { role: 'assistant', content: null, tool_calls: [{ id: 'c', type: 'function' }] },
          ],
        },
        param: /^messages\[1\]\.tool_calls\[0\]/,
      },
    ])('400 for $name (param $param)', async ({ body, param, message }) => {
      const res = await raw(stack, { ...base, ...body }, { key, path: CHAT });
      expect(paramOf(res)).toMatch(param);
      if (message !== undefined) {
        expect((res.json as { error: { message: string } }).error.message).toMatch(message);
      }
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
