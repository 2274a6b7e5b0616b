import type OpenAI from 'openai';
import {
  AuthenticationError,
  BadRequestError,
  InternalServerError,
  NotFoundError,
  PermissionDeniedError,
  UnprocessableEntityError,
} from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type ChatCompletion,
  chatModels,
  expectOpenAIError,
  invalidCases,
  NOT_MISSING,
  fakeUpstreamText,
  parseSse,
  probe,
  raw,
  rejection,
  sdk,
  simulatorEcho,
  userSays,
  withInfo,
} from '../support/contract-helpers';
import type { FakeUpstream } from '../support/fake-upstream';
import { simulatorDeployment, upstreamDeployment } from '../support/router-config';
import { freePort, type Stack } from '../support/stack';
import { startUpstreamStack } from '../support/upstream-stack';
import {
  AFTER_FIRST_TOKEN_FAILURES,
  failureCases,
  SHARED_UPSTREAM_FAILURES,
  type UpstreamFailureRow,
} from '../support/upstream-failures';

const CHAT = '/v1/chat/completions';
const LIMITS = { maxMessages: 4096, maxContentParts: 1024, maxTools: 128, maxChoices: 128 };

/**
 * Contract: every /v1/chat/completions parameter is validated with its OpenAI type and
 * range; a violation is a 400 invalid_request_error whose `param` names the field with its
 * path (`messages[2].role`, `messages[0].content[1].type`) before anything reaches a
 * worker, and `null` means the default as in OpenAI's API. The protective limits hold
 * (messages, content parts, tools, n, `max_output_tokens`). Model, auth and allow-list
 * errors and upstream failures come back exactly as for completions.
 */
describe('contract: chat request parameters, limits, access and upstream errors', () => {
  let upstream: FakeUpstream;
  let stack: Stack;
  let key: string;
  let client: OpenAI;

  beforeAll(async () => {
    const env = { AQUEDUCT_IDLE_TIMEOUT_MS: '2000' };
    ({ upstream, stack, key } = await startUpstreamStack('contract-chat-params', { env }, async (url) => [
      ...chatModels(url),
      // A port nobody listens on: connections to it are refused.
      upstreamDeployment('refused', `http://127.0.0.1:${await freePort()}/v1`),
      simulatorDeployment('compl', 'echo', {}, { mode: 'completion' }),
      simulatorDeployment('chatty', 'echo', {}, { mode: 'chat' }),
      simulatorDeployment('short', 'echo', {}, { max_output_tokens: 10 }),
      withInfo(upstreamDeployment('up-short', url), { max_output_tokens: 10 }),
      upstreamDeployment('up-unauthorized', url, { model: 'openai/unauthorized' }),
      upstreamDeployment('up-timeout', url, { timeout: 1 }),
    ]));
    client = sdk(stack, key);
  });

  afterAll(async () => {
    await stack?.stop();
    await upstream?.close();
  });

  const base = { model: 'echo', messages: userSays('hello world') };
  const bad = invalidCases(base);
  const user = (content: unknown) => ({ role: 'user', content });
  const quoted = (param: string) => new RegExp(`'${param.replace(/[[\].]/g, '\\$&')}'`);

  describe('validation', () => {
    const invalid = [
      bad('model missing', { model: undefined }, 'model', /Missing required parameter: 'model'/),
      bad('model not a string', { model: 7 }, 'model', NOT_MISSING),
      bad('model empty', { model: '' }, 'model', NOT_MISSING),
      bad('messages missing', { messages: undefined }, 'messages', /Missing required parameter: 'messages'/),
      bad('messages null', { messages: null }, 'messages'),
      bad('messages empty', { messages: [] }, 'messages', NOT_MISSING),
      bad('messages a string', { messages: 'hello' }, 'messages', NOT_MISSING),
      bad('messages an object', { messages: { role: 'user', content: 'x' } }, 'messages', NOT_MISSING),
      bad('messages[0] not an object', { messages: ['hello'] }, 'messages[0]'),
      bad('messages[1] null', { messages: [user('a'), null] }, 'messages[1]'),
      bad('a message without a role', { messages: [{ content: 'x' }] }, 'messages[0].role', /Missing required/),
      bad(
        'an unknown role',
        { messages: [user('a'), { role: 'assistant', content: 'b' }, { role: 'wizard', content: 'c' }] },
        'messages[2].role',
        NOT_MISSING,
      ),
      bad('a role of the wrong type', { messages: [{ role: 1, content: 'x' }] }, 'messages[0].role'),
      bad('the role "constructor"', { messages: [{ role: 'constructor', content: 'x' }] }, 'messages[0].role'),
      bad('the role "__proto__"', { messages: [{ role: '__proto__', content: 'x' }] }, 'messages[0].role'),
      bad('the role "toString"', { messages: [user('a'), { role: 'toString', content: 'x' }] }, 'messages[1].role'),
      bad('a user message without content', { messages: [{ role: 'user' }] }, 'messages[0].content', /Missing/),
      bad('content a number', { messages: [user(42)] }, 'messages[0].content', NOT_MISSING),
      bad('content an object', { messages: [user({ text: 'x' })] }, 'messages[0].content', NOT_MISSING),
      bad('content an empty array', { messages: [user([])] }, 'messages[0].content'),
      bad(
        'an assistant message without content or tool_calls',
        { messages: [user('a'), { role: 'assistant' }] },
        'messages[1].content',
      ),
      bad(
        'a system message with an image part',
        { messages: [{ role: 'system', content: [{ type: 'image_url', image_url: { url: 'x' } }] }, user('a')] },
        'messages[0].content[0].type',
      ),
      bad('a message name that is not a string', { messages: [{ ...user('a'), name: 5 }] }, 'messages[0].name'),
      bad('n 0', { n: 0 }, 'n', />=\s*1/),
      bad('n 129 (over the limit of 128 choices)', { n: 129 }, 'n', /<=\s*128/),
      bad('n 1.5', { n: 1.5 }, 'n', NOT_MISSING),
      bad('n "2"', { n: '2' }, 'n', NOT_MISSING),
      bad('temperature 2.5', { temperature: 2.5 }, 'temperature', /<=\s*2/),
      bad('temperature -1', { temperature: -1 }, 'temperature', />=\s*0/),
      bad('temperature "hot"', { temperature: 'hot' }, 'temperature', NOT_MISSING),
      bad('top_p 1.5', { top_p: 1.5 }, 'top_p', /<=\s*1/),
      bad('top_p "high"', { top_p: 'high' }, 'top_p', NOT_MISSING),
      bad('presence_penalty 3', { presence_penalty: 3 }, 'presence_penalty'),
      bad('presence_penalty "x"', { presence_penalty: 'x' }, 'presence_penalty'),
      bad('frequency_penalty -3', { frequency_penalty: -3 }, 'frequency_penalty'),
      bad('frequency_penalty true', { frequency_penalty: true }, 'frequency_penalty'),
      bad(
        'stream_options without stream',
        { stream_options: { include_usage: true } },
        'stream_options',
        /only allowed when 'stream' is enabled/,
      ),
      bad('stream "yes"', { stream: 'yes' }, 'stream', NOT_MISSING),
      bad(
        'stream_options.include_usage "yes"',
        { stream: true, stream_options: { include_usage: 'yes' } },
        'stream_options.include_usage',
      ),
      bad('stop with 5 sequences', { stop: ['a', 'b', 'c', 'd', 'e'] }, 'stop'),
      bad('stop a number', { stop: 3 }, 'stop'),
      bad('stop an empty array', { stop: [] }, 'stop'),
      bad('stop with a number inside', { stop: ['a', 1] }, 'stop'),
      bad('max_tokens -1', { max_tokens: -1 }, 'max_tokens'),
      bad('max_tokens 1.5', { max_tokens: 1.5 }, 'max_tokens', NOT_MISSING),
      bad('max_tokens "10"', { max_tokens: '10' }, 'max_tokens', NOT_MISSING),
      bad('max_completion_tokens -1', { max_completion_tokens: -1 }, 'max_completion_tokens'),
      bad('max_completion_tokens "10"', { max_completion_tokens: '10' }, 'max_completion_tokens'),
      bad('logprobs "yes"', { logprobs: 'yes' }, 'logprobs', NOT_MISSING),
      bad('logprobs 1', { logprobs: 1 }, 'logprobs', NOT_MISSING),
      bad('top_logprobs 21', { logprobs: true, top_logprobs: 21 }, 'top_logprobs', /20/),
      bad('top_logprobs -1', { logprobs: true, top_logprobs: -1 }, 'top_logprobs'),
      bad('top_logprobs without logprobs', { top_logprobs: 2 }, 'top_logprobs', /logprobs/),
      bad('top_logprobs 1.5', { logprobs: true, top_logprobs: 1.5 }, 'top_logprobs'),
      bad('seed 1.5', { seed: 1.5 }, 'seed', NOT_MISSING),
      bad('seed "42"', { seed: '42' }, 'seed', NOT_MISSING),
      bad('logit_bias an array', { logit_bias: [1, 2] }, 'logit_bias'),
      bad('user a number', { user: 5 }, 'user', NOT_MISSING),
      bad('user over 512 characters', { user: 'u'.repeat(513) }, 'user'),
    ];

    it.each(invalid)('400 for $name (param $param)', async ({ body, param, message }) => {
      const res = await raw(stack, body, { key, path: CHAT });
      expectOpenAIError(res, 400, {
        type: 'invalid_request_error',
        param,
        code: null,
        message: [quoted(param), ...message],
      });
    });

    it.each([
      { name: 'logit_bias value 101', logit_bias: { '50256': 101 } },
      { name: 'logit_bias value a string', logit_bias: { '50256': 'x' } },
      { name: 'logit_bias key not a token id', logit_bias: { hello: 1 } },
    ])('400 for $name (param logit_bias, or its key)', async ({ logit_bias }) => {
      const res = await raw(stack, { ...base, logit_bias }, { key, path: CHAT });
      const err = expectOpenAIError(res, 400, { type: 'invalid_request_error' });
      expect(err.param).toMatch(/^logit_bias/);
      expect(err.message).toMatch(/'logit_bias/);
    });

    it.each([
      { name: 'a content part of an unknown type', part: { type: 'video', video: {} }, param: 'type' },
      { name: 'a content part without a type', part: { text: 'x' }, param: 'type' },
      { name: 'a text part without text', part: { type: 'text' }, param: 'text' },
      { name: 'a text part whose text is a number', part: { type: 'text', text: 9 }, param: 'text' },
      { name: 'an image_url part without its url', part: { type: 'image_url', image_url: {} }, param: 'image_url.url' },
      { name: 'an image_url part without image_url', part: { type: 'image_url' }, param: 'image_url' },
      {
        name: 'an input_audio part without data',
        part: { type: 'input_audio', input_audio: {} },
        param: 'input_audio.data',
      },
      { name: 'a refusal part in a user message', part: { type: 'refusal', refusal: 'no' }, param: 'type' },
    ])('400 for $name, naming messages[1].content[1].$param', async ({ part, param }) => {
      const messages = [{ role: 'system', content: 's' }, user([{ type: 'text', text: 'ok' }, part])];
      const res = await raw(stack, { ...base, messages }, { key, path: CHAT });
      expectOpenAIError(res, 400, { type: 'invalid_request_error', param: `messages[1].content[1].${param}` });
    });

    it('400 for a content part that is not an object, naming it', async () => {
      const res = await raw(stack, { ...base, messages: [user(['just a string'])] }, { key, path: CHAT });
      expectOpenAIError(res, 400, { type: 'invalid_request_error', param: 'messages[0].content[0]' });
    });

    it.each([
      { name: 'a refusal part in an assistant message', role: 'assistant', part: { type: 'refusal', refusal: 'no' } },
      { name: 'a text part in a tool message', role: 'tool', part: { type: 'text', text: 'r' } },
      { name: 'a text part in a developer message', role: 'developer', part: { type: 'text', text: 'd' } },
    ])('accepts $name', async ({ role, part }) => {
      const message = { role, content: [part], ...(role === 'tool' && { tool_call_id: 'c1' }) };
      const res = await raw(stack, { ...base, messages: [user('a'), message, user('b c')] }, { key, path: CHAT });
      expect(res.status, res.text).toBe(200);
      expect((res.json as ChatCompletion).choices[0]?.message.content).toBe('b c');
    });

    it('accepts image_url, input_audio and file parts on the simulator, answering their text', async () => {
      const content = [
        { type: 'text', text: 'describe' },
        { type: 'image_url', image_url: { url: 'data:image/png;base64,iVBORw0KGgo=', detail: 'low' } },
        { type: 'input_audio', input_audio: { data: 'UklGRg==', format: 'wav' } },
        { type: 'file', file: { file_id: 'file-abc' } },
        { type: 'text', text: 'these' },
      ];
      const res = await raw(stack, { ...base, messages: [user(content)] }, { key, path: CHAT });
      expect(res.status, res.text).toBe(200);
      expect((res.json as ChatCompletion).choices[0]?.message.content).toBe('describe these');
    });

    it('passes image_url parts through to the upstream as sent', async () => {
      const mark = probe();
      const messages = [
        user([
          { type: 'text', text: 'what is in it' },
          { type: 'image_url', image_url: { url: 'https://example.com/x.png', detail: 'high' } },
        ]),
      ];
      const res = await raw(stack, { model: 'up', messages, ...mark }, { key, path: CHAT });
      expect(res.status, res.text).toBe(200);
      expect((res.json as ChatCompletion).choices[0]?.message.content).toBe(fakeUpstreamText('what is in it'));
      expect(upstream.requests.find((r) => r.body.probe === mark.probe)?.body.messages).toEqual(messages);
    });

    it('accepts nulls for every optional parameter, as OpenAI does', async () => {
      const nulls = {
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
      };
      for (const model of ['echo', 'up']) {
        const res = await raw(stack, { model, messages: userSays('fine now'), ...nulls }, { key, path: CHAT });
        expect(res.status, `${model}: ${res.text}`).toBe(200);
        const json = res.json as ChatCompletion;
        expect(json.object).toBe('chat.completion');
        expect(json.choices).toHaveLength(1);
        expect(json.choices[0]?.message.content).toBe(model === 'up' ? fakeUpstreamText('fine now') : 'fine now');
      }
      const streamed = await raw(stack, { ...base, ...nulls, stream: true, stream_options: null }, { key, path: CHAT });
      expect(streamed.status).toBe(200);
      expect(parseSse(streamed.text).data.at(-1)).toBe('[DONE]');
    });

    const valid: { name: string; body: Record<string, unknown>; stream?: boolean; choices?: number }[] = [
      { name: 'temperature 0 and 2, top_p 0 and 1', body: { temperature: 2, top_p: 0 } },
      { name: 'temperature 0, top_p 1', body: { temperature: 0, top_p: 1 } },
      { name: 'penalties at ±2', body: { presence_penalty: 2, frequency_penalty: -2 } },
      { name: 'logit_bias at ±100', body: { logit_bias: { '50256': -100, '1': 100 } } },
      { name: 'max_tokens 4096 (the model maximum)', body: { max_tokens: 4096 } },
      { name: 'max_completion_tokens 4096', body: { max_completion_tokens: 4096 } },
      { name: 'max_tokens 0', body: { max_tokens: 0 } },
      { name: 'stop with 4 sequences', body: { stop: ['w', 'x', 'y', 'z'] } },
      { name: 'stop as a string', body: { stop: 'zzz' } },
      { name: 'logprobs with top_logprobs 20', body: { logprobs: true, top_logprobs: 20 } },
      { name: 'seed negative', body: { seed: -3 } },
      { name: 'seed beyond 2^53', body: { seed: 2 ** 60 } },
      { name: 'user of 512 characters', body: { user: 'u'.repeat(512) } },
      { name: 'stream with stream_options {}', body: { stream: true, stream_options: {} }, stream: true },
      {
        name: 'stream_options with include_obfuscation (an SDK-typed field)',
        body: { stream: true, stream_options: { include_usage: true, include_obfuscation: false } },
        stream: true,
      },
      { name: 'an empty string content', body: { messages: [user('')] } },
      { name: 'store, metadata and service_tier', body: { store: false, metadata: { a: 'b' }, service_tier: 'auto' } },
      { name: 'a developer message', body: { messages: [{ role: 'developer', content: 'd' }, user('u')] } },
      {
        name: 'a legacy function message',
        body: { messages: [user('u'), { role: 'function', name: 'f', content: 'r' }, user('v')] },
      },
    ];

    it.each(valid)('accepts $name', async ({ body, stream, choices }) => {
      const res = await raw(stack, { ...base, ...body }, { key, path: CHAT });
      expect(res.status, res.text).toBe(200);
      if (stream === true) {
        expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/);
        expect(parseSse(res.text).data.at(-1)).toBe('[DONE]');
        return;
      }
      const json = res.json as ChatCompletion;
      expect(json.object).toBe('chat.completion');
      expect(json.choices).toHaveLength(choices ?? 1);
    });

    it.each([
      { name: 'n out of range', body: { ...base, n: 0 }, param: 'n' },
      {
        name: 'a bad role',
        body: { ...base, messages: [{ role: 'wizard', content: 'x' }] },
        param: 'messages[0].role',
      },
      {
        name: 'an unknown content part',
        body: { ...base, messages: [user([{ type: 'hologram' }])] },
        param: 'messages[0].content[0].type',
      },
      { name: 'a bad temperature', body: { ...base, temperature: 9 }, param: 'temperature' },
    ])('the SDK raises BadRequestError for $name, streamed or not', async ({ body, param }) => {
      for (const stream of [false, true]) {
        const err = await rejection(
          client.chat.completions.create({ ...body, stream } as unknown as OpenAI.ChatCompletionCreateParams),
        );
        expect(err).toBeInstanceOf(BadRequestError);
        expect(err.type).toBe('invalid_request_error');
        expect(err.param).toBe(param);
        expect(err.requestID).toMatch(/\S/);
      }
    });

    it('an invalid stream request gets a plain JSON 400, not an event stream', async () => {
      const res = await raw(stack, { ...base, stream: true, n: 0 }, { key, path: CHAT });
      expectOpenAIError(res, 400, { param: 'n' });
    });

    it('an invalid request never reaches the upstream', async () => {
      const mark = probe();
      const bodies = [
        { messages: [{ role: 'wizard', content: 'x' }] },
        { messages: [user([{ type: 'video' }])] },
        { messages: userSays('x'), temperature: 5 },
      ];
      for (const b of bodies) {
        const res = await raw(stack, { model: 'up', ...b, ...mark }, { key, path: CHAT });
        expect(res.status).toBe(400);
      }
      await new Promise((r) => setTimeout(r, 200));
      expect(upstream.requests.some((r) => r.body.probe === mark.probe)).toBe(false);
    });
  });

  describe('forwarding to the upstream', () => {
    it('forwards every OpenAI chat parameter and the allowed extensions as sent, but not user_id', async () => {
      const mark = probe();
      const sent = {
        messages: [{ role: 'system', content: 'sys' }, ...userSays('one two')],
        max_completion_tokens: 7,
        temperature: 0.3,
        top_p: 0.9,
        n: 2,
        stop: ['\n', 'END'],
        presence_penalty: 0.5,
        frequency_penalty: -0.5,
        logit_bias: { '50256': -100 },
        logprobs: true,
        top_logprobs: 2,
        seed: 42,
        user: 'u-9',
        tools: [{ type: 'function', function: { name: 'f', parameters: { type: 'object', properties: {} } } }],
        tool_choice: 'auto',
        parallel_tool_calls: false,
        response_format: { type: 'json_object' },
        metadata: { team: 'a' },
        top_k: 5,
        repetition_penalty: 1.1,
        ...mark,
      };
      const res = await raw(stack, { model: 'up', user_id: 'end-user-7', ...sent }, { key, path: CHAT });
      expect(res.status, res.text).toBe(200);
      const seen = upstream.requests.find((r) => r.body.probe === mark.probe);
      expect(seen?.path).toBe('/v1/chat/completions');
      expect(seen?.body).toEqual({ ...sent, model: 'fake-model', stream: false });
    });

    it('drops fields that are neither OpenAI chat parameters nor allowed extensions', async () => {
      const mark = probe();
      const res = await raw(
        stack,
        {
          model: 'up',
          messages: userSays('x'),
          access_token: key,
          vllm_private: { x: 1 },
          prompt: 'a completions field',
          echo: true,
          top_k: 2,
          ...mark,
        },
        { key, path: CHAT },
      );
      expect(res.status, res.text).toBe(200);
      const seen = upstream.requests.find((r) => r.body.probe === mark.probe);
      expect(seen?.body).toMatchObject({ messages: userSays('x'), top_k: 2 });
      for (const field of ['access_token', 'vllm_private', 'prompt', 'echo', 'user_id']) {
        expect(seen?.body).not.toHaveProperty(field);
      }
    });

    it('a stream is forwarded asking for usage, and the client still sees no usage it did not ask for', async () => {
      const mark = probe();
      const res = await raw(
        stack,
        { model: 'up', messages: userSays('a b'), stream: true, ...mark },
        { key, path: CHAT },
      );
      expect(res.status).toBe(200);
      const sse = parseSse(res.text);
      expect(sse.usageChunks).toEqual([]);
      expect(sse.events.every((e) => e.usage === undefined || e.usage === null)).toBe(true);
      const seen = upstream.requests.find((r) => r.body.probe === mark.probe);
      expect(seen?.body).toMatchObject({ model: 'fake-model', stream: true, stream_options: { include_usage: true } });
    });
  });

  describe('protective limits', () => {
    it(`messages: ${LIMITS.maxMessages} accepted, one more is a 400 naming messages`, async () => {
      const many = (n: number) => Array.from({ length: n }, (_, i) => user(`m${i}`));
      const ok = await raw(stack, { ...base, messages: many(LIMITS.maxMessages) }, { key, path: CHAT });
      expect(ok.status, ok.text.slice(0, 300)).toBe(200);
      expect((ok.json as ChatCompletion).choices[0]?.message.content).toBe(`m${LIMITS.maxMessages - 1}`);
      const over = await raw(stack, { ...base, messages: many(LIMITS.maxMessages + 1) }, { key, path: CHAT });
      expectOpenAIError(over, 400, { param: 'messages', message: new RegExp(String(LIMITS.maxMessages)) });
    });

    it(`content parts: ${LIMITS.maxContentParts} accepted, one more is a 400 naming the content`, async () => {
      const parts = (n: number) => Array.from({ length: n }, () => ({ type: 'text', text: 'p' }));
      const ok = await raw(stack, { ...base, messages: [user(parts(LIMITS.maxContentParts))] }, { key, path: CHAT });
      expect(ok.status, ok.text.slice(0, 300)).toBe(200);
      const over = await raw(
        stack,
        { ...base, messages: [user('a'), user(parts(LIMITS.maxContentParts + 1))] },
        { key, path: CHAT },
      );
      expectOpenAIError(over, 400, {
        param: 'messages[1].content',
        message: new RegExp(String(LIMITS.maxContentParts)),
      });
    });

    it(`tools: ${LIMITS.maxTools} accepted, one more is a 400 naming tools`, async () => {
      const tools = (n: number) =>
        Array.from({ length: n }, (_, i) => ({ type: 'function', function: { name: `f${i}` } }));
      const ok = await raw(stack, { ...base, tools: tools(LIMITS.maxTools), tool_choice: 'auto' }, { key, path: CHAT });
      expect(ok.status, ok.text.slice(0, 300)).toBe(200);
      const over = await raw(stack, { ...base, tools: tools(LIMITS.maxTools + 1) }, { key, path: CHAT });
      expectOpenAIError(over, 400, { param: 'tools', message: new RegExp(String(LIMITS.maxTools)) });
    });

    it(`n: ${LIMITS.maxChoices} choices accepted`, async () => {
      const res = await raw(stack, { ...base, n: LIMITS.maxChoices, max_tokens: 1 }, { key, path: CHAT });
      expect(res.status).toBe(200);
      expect((res.json as ChatCompletion).choices.map((c) => c.index)).toEqual(
        Array.from({ length: LIMITS.maxChoices }, (_, i) => i),
      );
    });

    it.each([
      { model: 'echo', limit: 4096 },
      { model: 'short', limit: 10 },
      { model: 'up-short', limit: 10 },
    ])(
      'max_output_tokens of $model ($limit): above it max_tokens or max_completion_tokens is a 400 param max_tokens',
      async ({ model, limit }) => {
        for (const field of ['max_tokens', 'max_completion_tokens']) {
          for (const stream of [false, true]) {
            const body = { model, messages: userSays('x'), [field]: limit + 1, stream };
            const res = await raw(stack, body, { key, path: CHAT });
            expectOpenAIError(res, 400, {
              type: 'invalid_request_error',
              param: 'max_tokens',
              message: new RegExp(String(limit)),
            });
          }
          const at = await raw(stack, { model, messages: userSays('a b'), [field]: limit }, { key, path: CHAT });
          expect(at.status, at.text).toBe(200);
        }
      },
    );

    it('max_completion_tokens is the bound when both are sent', async () => {
      const over = await raw(
        stack,
        { model: 'short', messages: userSays('x'), max_tokens: 5, max_completion_tokens: 11 },
        { key, path: CHAT },
      );
      expectOpenAIError(over, 400, { param: 'max_tokens', message: /10/ });
    });
  });

  describe('models', () => {
    it('404 model_not_found for an unknown model, raw (streamed or not) and through the SDK', async () => {
      for (const stream of [false, true]) {
        const res = await raw(stack, { ...base, model: 'no-such-model', stream }, { key, path: CHAT });
        expectOpenAIError(res, 404, {
          type: 'invalid_request_error',
          param: 'model',
          code: 'model_not_found',
          message: /no-such-model/,
        });
        const err = await rejection(
          client.chat.completions.create({ model: 'no-such-model', messages: userSays('x'), stream }),
        );
        expect(err).toBeInstanceOf(NotFoundError);
        expect(err.code).toBe('model_not_found');
      }
    });

    it.each([
      { model: 'embed', use: /\/v1\/embeddings/ },
      { model: 'up-embed', use: /\/v1\/embeddings/ },
      { model: 'compl', use: /\/v1\/completions/ },
    ])('$model (its mode does not serve chat) → 404 model_not_supported naming $use', async ({ model, use }) => {
      const mark = probe();
      for (const stream of [false, true]) {
        for (const path of [CHAT, '/chat/completions']) {
          const res = await raw(stack, { model, messages: userSays('x'), stream, ...mark }, { key, path });
          expectOpenAIError(res, 404, { type: 'invalid_request_error', code: 'model_not_supported', message: use });
        }
        const err = await rejection(client.chat.completions.create({ model, messages: userSays('x'), stream }));
        expect(err).toBeInstanceOf(NotFoundError);
        expect(err.code).toBe('model_not_supported');
      }
      await new Promise((r) => setTimeout(r, 100));
      expect(upstream.requests.some((r) => r.body.probe === mark.probe)).toBe(false);
    });

    it('a chat-mode model serves chat, and is refused on /v1/completions naming /v1/chat/completions', async () => {
      const res = await raw(stack, { model: 'chatty', messages: userSays('a b') }, { key, path: CHAT });
      expect(res.status, res.text).toBe(200);
      expect((res.json as ChatCompletion).choices[0]?.message.content).toBe(simulatorEcho('a b'));
      const refused = await raw(stack, { model: 'chatty', prompt: 'a b' }, { key, path: '/v1/completions' });
      expectOpenAIError(refused, 404, { code: 'model_not_supported', message: /\/v1\/chat\/completions/ });
    });
  });

  describe('auth and allow-lists', () => {
    it('401 without a key (code null), and for an unknown key (invalid_api_key)', async () => {
      for (const stream of [false, true]) {
        expectOpenAIError(await raw(stack, { ...base, stream }, { path: CHAT }), 401, {
          type: 'invalid_request_error',
          code: null,
          message: /API key/,
        });
        const wrong = 'sk-aq-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA';
        const res = await raw(stack, { ...base, stream }, { key: wrong, path: CHAT });
        expectOpenAIError(res, 401, { type: 'invalid_request_error', code: 'invalid_api_key' });
        expect(res.text).not.toContain(wrong.slice(6));
      }
      const err = await rejection(sdk(stack, 'sk-aq-wrong').chat.completions.create(base));
      expect(err).toBeInstanceOf(AuthenticationError);
    });

    it('a body access_token is not a credential: 401', async () => {
      const res = await raw(stack, { ...base, access_token: key }, { path: CHAT });
      expectOpenAIError(res, 401, { type: 'invalid_request_error' });
    });

    it('401 for a revoked key', async () => {
      const { key: revoked, token } = await stack.tokens.create({ name: 'to-revoke' });
      // Not used before its revocation: the gateway caches a key's record for a second.
      expect(await stack.tokens.revoke(token.id)).toBe(true);
      expectOpenAIError(await raw(stack, base, { key: revoked, path: CHAT }), 401, { type: 'invalid_request_error' });
    });

    it('403 model_not_allowed outside the allow-list (streamed or not); the allowed model works', async () => {
      const limited = await stack.createKey({ models: ['echo'] });
      const limitedClient = sdk(stack, limited);
      for (const stream of [false, true]) {
        const res = await raw(stack, { ...base, model: 'up', stream }, { key: limited, path: CHAT });
        expectOpenAIError(res, 403, { param: 'model', code: 'model_not_allowed', message: /up/ });
        const err = await rejection(limitedClient.chat.completions.create({ ...base, model: 'lorem', stream }));
        expect(err).toBeInstanceOf(PermissionDeniedError);
      }
      const ok = await limitedClient.chat.completions.create(base);
      expect(ok.choices[0]?.message.content).toBe('hello world');
      // An unknown model is still an unknown model for a restricted key.
      const unknown = await raw(stack, { ...base, model: 'ghost' }, { key: limited, path: CHAT });
      expectOpenAIError(unknown, 404, { param: 'model', code: 'model_not_found' });
    });
  });

  describe('upstream failures (as for completions)', () => {
    const rows: UpstreamFailureRow[] = [
      ...SHARED_UPSTREAM_FAILURES,
      {
        name: 'upstream 400 keeps its message',
        knobs: { fake_fail: 'status:400', fake_error_message: 'messages contain a forbidden token' },
        status: [400],
        cls: BadRequestError,
        type: 'invalid_request_error',
        message: /messages contain a forbidden token/,
      },
      {
        name: 'context_length_exceeded names messages',
        knobs: { fake_fail: 'context-length' },
        status: [400],
        cls: BadRequestError,
        param: 'messages',
        code: 'context_length_exceeded',
        message: /maximum context length/,
      },
      {
        name: 'upstream 422',
        knobs: { fake_fail: 'status:422', fake_error_message: 'messages plus max_tokens exceed the context' },
        status: [422],
        cls: UnprocessableEntityError,
        message: /exceed the context/,
      },
      {
        name: 'no answer within the deployment timeout',
        model: 'up-timeout',
        knobs: { fake_fail: 'hang' },
        status: [504],
        cls: InternalServerError,
        type: 'server_error',
        message: /time/,
      },
    ];
    const cases = failureCases(rows);

    it.each(cases)('$name ($mode) → $status', async (row) => {
      const body = { model: row.model ?? 'up', messages: userSays('a b c'), stream: row.stream, ...row.knobs };
      const res = await raw(stack, body, { key, path: CHAT });
      const statuses = [row.status].flat();
      expect(statuses, res.text.slice(0, 300)).toContain(res.status);
      // Late commit: a stream that fails before its first token is a plain JSON error, not SSE.
      expectOpenAIError(res, res.status, { type: row.type, param: row.param, code: row.code, message: row.message });
      expect(res.status).not.toBe(401);
      if (res.status === 429) {
        expect(res.headers.get('retry-after')).toBe('1');
      }
      const err = await rejection(
        (async () => {
          const out = await client.chat.completions.create(body as unknown as OpenAI.ChatCompletionCreateParams);
          if (row.stream) {
            for await (const _ of out as AsyncIterable<unknown>) {
              // A failure before the first token must surface as the status, not mid-iteration.
            }
          }
          return out;
        })(),
      );
      expect(err).toBeInstanceOf(row.cls);
      expect(statuses).toContain(err.status);
    });

    it.each(AFTER_FIRST_TOKEN_FAILURES)(
      'after the first token, $name: one data:{"error"} event, then data: [DONE]',
      async ({ fail, message }) => {
        const prompt = 'one two three four five';
        const body = { model: 'up', messages: userSays(prompt), stream: true, fake_fail: fail, fake_itl_ms: 30 };
        const res = await raw(stack, body, { key, path: CHAT });
        expect(res.status).toBe(200);
        const sse = parseSse(res.text);
        expect(sse.data.at(-1)).toBe('[DONE]');
        expect(sse.errors).toHaveLength(1);
        expect(sse.data.at(-2)).toBe(JSON.stringify(sse.errors[0]));
        expect(sse.errors[0]?.error.type).toBe('server_error');
        expect(sse.errors[0]?.error.message).toMatch(message);
        const text = sse.chunks
          .map((c) =>
            (c.choices as unknown as { delta: { content?: string } }[]).map((x) => x.delta.content ?? '').join(''),
          )
          .join('');
        expect(text.length).toBeGreaterThan(0);
        expect(fakeUpstreamText(prompt).startsWith(text)).toBe(true);
      },
    );
  });
});
