import type OpenAI from 'openai';
import { BadRequestError } from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  type ChatCompletion,
  chatModels,
  expectOpenAIError,
  fakeUpstreamText,
  parseSse,
  probe,
  raw,
  rejection,
  sdk,
  userSays,
} from '../support/contract-helpers';
import type { FakeUpstream } from '../support/fake-upstream';
import type { Stack } from '../support/stack';
import { startUpstreamStack } from '../support/upstream-stack';

const CHAT = '/v1/chat/completions';

/**
 * Contract: every /v1/chat/completions parameter is validated with its OpenAI type and
 * range; a violation is a 400 invalid_request_error whose `param` names the field with its
 * path (`messages[2].role`) and whose message says what is wrong, before anything reaches a
 * worker. Valid edge values are accepted; the OpenAI parameters and the allowed extensions
 * reach the upstream as sent, anything else does not.
 */
describe('contract: chat request parameters', () => {
  let upstream: FakeUpstream;
  let stack: Stack;
  let key: string;
  let client: OpenAI;

  beforeAll(async () => {
    ({ upstream, stack, key } = await startUpstreamStack('contract-chat-params', {}, chatModels));
    client = sdk(stack, key);
  });

  afterAll(async () => {
    await stack?.stop();
    await upstream?.close();
  });

  const base = { model: 'echo', messages: userSays('hello world') };
  const notMissing = /^(?!.*Missing required)/;
  /** `param` exact, or a pattern when OpenAI's own spelling of the path varies (`logit_bias.50256`). */
  const bad = (name: string, patch: Record<string, unknown>, param: string | RegExp, ...message: RegExp[]) => ({
    name,
    body: { ...base, ...patch },
    param,
    message,
  });
  const user = (content: unknown) => ({ role: 'user', content });

  const invalid = [
    bad('model missing', { model: undefined }, 'model', /Missing required parameter: 'model'/),
    bad('model not a string', { model: 7 }, 'model', /'model'/, notMissing),
    bad('messages missing', { messages: undefined }, 'messages', /Missing required parameter: 'messages'/),
    bad('messages empty', { messages: [] }, 'messages', /'messages'/),
    bad('messages a string', { messages: 'hello' }, 'messages', /'messages'/, notMissing),
    bad('messages[0] not an object', { messages: ['hello'] }, 'messages[0]', /'messages\[0\]'/),
    bad('a message without a role', { messages: [{ content: 'x' }] }, 'messages[0].role', /'messages\[0\]\.role'/),
    bad(
      'an unknown role',
      { messages: [user('a'), { role: 'assistant', content: 'b' }, { role: 'wizard', content: 'c' }] },
      'messages[2].role',
      /'messages\[2\]\.role'/,
    ),
    bad('a role of the wrong type', { messages: [{ role: 1, content: 'x' }] }, 'messages[0].role'),
    bad(
      'a tool message without tool_call_id',
      { messages: [user('a'), { role: 'tool', content: 'result' }] },
      'messages[1].tool_call_id',
      /'messages\[1\]\.tool_call_id'/,
    ),
    bad('a user message without content', { messages: [{ role: 'user' }] }, 'messages[0].content'),
    bad('content a number', { messages: [user(42)] }, 'messages[0].content', /'messages\[0\]\.content/),
    bad('content an object', { messages: [user({ text: 'x' })] }, 'messages[0].content', /'messages\[0\]\.content/),
    bad('n 0', { n: 0 }, 'n', /'n'/, />=\s*1/),
    bad('n 129', { n: 129 }, 'n', /'n'/, /<=\s*128/),
    bad('n 1.5', { n: 1.5 }, 'n', /'n'/, notMissing),
    bad('temperature 2.5', { temperature: 2.5 }, 'temperature', /'temperature'/, /<=\s*2/),
    bad('temperature -1', { temperature: -1 }, 'temperature', /'temperature'/, />=\s*0/),
    bad('temperature "hot"', { temperature: 'hot' }, 'temperature', /'temperature'/, notMissing),
    bad('top_p 1.5', { top_p: 1.5 }, 'top_p', /'top_p'/, /<=\s*1/),
    bad('presence_penalty 3', { presence_penalty: 3 }, 'presence_penalty', /'presence_penalty'/),
    bad('frequency_penalty -3', { frequency_penalty: -3 }, 'frequency_penalty', /'frequency_penalty'/),
    bad(
      'stream_options without stream',
      { stream_options: { include_usage: true } },
      'stream_options',
      /only allowed when 'stream' is enabled/,
    ),
    bad('stream "yes"', { stream: 'yes' }, 'stream', /'stream'/, notMissing),
    bad('stop with 5 sequences', { stop: ['a', 'b', 'c', 'd', 'e'] }, 'stop', /'stop'/),
    bad('stop a number', { stop: 3 }, 'stop', /'stop'/),
    bad('max_tokens -1', { max_tokens: -1 }, 'max_tokens', /'max_tokens'/),
    bad('max_tokens over the model maximum (4096)', { max_tokens: 4097 }, 'max_tokens', /4096/),
    bad('max_completion_tokens over the model maximum', { max_completion_tokens: 4097 }, 'max_tokens', /4096/),
    bad('max_completion_tokens -1', { max_completion_tokens: -1 }, 'max_completion_tokens', /'max_completion_tokens'/),
    bad('logprobs "yes"', { logprobs: 'yes' }, 'logprobs', /'logprobs'/, notMissing),
    bad('top_logprobs 21', { logprobs: true, top_logprobs: 21 }, 'top_logprobs', /'top_logprobs'/, /20/),
    bad('top_logprobs -1', { logprobs: true, top_logprobs: -1 }, 'top_logprobs', /'top_logprobs'/),
    bad('logit_bias value 101', { logit_bias: { '50256': 101 } }, /^logit_bias/, /'logit_bias/),
    bad('seed 1.5', { seed: 1.5 }, 'seed', /'seed'/, notMissing),
    bad('user a number', { user: 5 }, 'user', /'user'/, notMissing),
  ];

  it.each(invalid)('400 for $name (param $param)', async ({ body, param, message }) => {
    const res = await raw(stack, body, { key, path: CHAT });
    const err = expectOpenAIError(res, 400, {
      type: 'invalid_request_error',
      message,
      ...(typeof param === 'string' && { param }),
    });
    expect(err.param).toMatch(param);
  });

  it.each([
    { name: 'a content part of an unknown type', content: [{ type: 'video', video: {} }] },
    { name: 'a text part without text', content: [{ type: 'text' }] },
    { name: 'a text part whose text is not a string', content: [{ type: 'text', text: 9 }] },
    { name: 'a content part that is not an object', content: ['x'] },
  ])('400 for $name, naming messages[0].content', async ({ content }) => {
    const res = await raw(stack, { ...base, messages: [user(content)] }, { key, path: CHAT });
    const err = expectOpenAIError(res, 400, { type: 'invalid_request_error' });
    expect(err.param).toMatch(/^messages\[0\]\.content/);
  });

  it.each([
    { name: 'n out of range', body: { ...base, n: 0 }, param: 'n' },
    { name: 'a bad role', body: { ...base, messages: [{ role: 'wizard', content: 'x' }] }, param: 'messages[0].role' },
    { name: 'a bad temperature', body: { ...base, temperature: 9 }, param: 'temperature' },
    {
      name: 'stream_options without stream',
      body: { ...base, stream_options: { include_usage: true } },
      param: 'stream_options',
    },
  ])('the SDK raises BadRequestError for $name', async ({ body, param }) => {
    const err = await rejection(
      client.chat.completions.create(body as unknown as OpenAI.ChatCompletionCreateParamsNonStreaming),
    );
    expect(err).toBeInstanceOf(BadRequestError);
    expect(err.status).toBe(400);
    expect(err.type).toBe('invalid_request_error');
    expect(err.param).toBe(param);
    expect(err.requestID).toMatch(/\S/);
  });

  it('a stream request that is invalid gets a plain JSON 400, not an event stream', async () => {
    const res = await raw(stack, { ...base, stream: true, n: 0 }, { key, path: CHAT });
    expectOpenAIError(res, 400, { param: 'n' });
  });

  const valid: { name: string; body: Record<string, unknown>; stream?: boolean; choices?: number }[] = [
    { name: 'n 128', body: { n: 128 }, choices: 128 },
    { name: 'temperature 0 and 2', body: { temperature: 2, top_p: 0 } },
    { name: 'max_tokens 4096 (the model maximum)', body: { max_tokens: 4096 } },
    { name: 'max_completion_tokens 4096', body: { max_completion_tokens: 4096 } },
    { name: 'stop with 4 sequences', body: { stop: ['w', 'x', 'y', 'z'] } },
    { name: 'stop as a string', body: { stop: 'zzz' } },
    { name: 'top_logprobs 20', body: { logprobs: true, top_logprobs: 20 } },
    { name: 'seed negative', body: { seed: -3 } },
    { name: 'user', body: { user: 'end-user-1' } },
    { name: 'stream with stream_options {}', body: { stream: true, stream_options: {} }, stream: true },
    {
      name: 'stream_options with include_obfuscation (an SDK-typed field)',
      body: { stream: true, stream_options: { include_usage: true, include_obfuscation: false } },
      stream: true,
    },
    {
      name: 'a system message as content parts',
      body: { messages: [{ role: 'system', content: [{ type: 'text', text: 's' }] }, user('u')] },
    },
    {
      name: 'an assistant message with only tool_calls and no content key',
      body: {
        messages: [
          user('u'),
          { role: 'assistant', tool_calls: [{ id: 'c1', type: 'function', function: { name: 'f', arguments: '{}' } }] },
          { role: 'tool', tool_call_id: 'c1', content: [{ type: 'text', text: 'r' }] },
          user('again'),
        ],
      },
    },
    { name: 'an empty string content', body: { messages: [user('')] } },
    { name: 'store false', body: { store: false } },
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

  it('a stream is forwarded with include_usage, and the client still sees no usage it did not ask for', async () => {
    const mark = probe();
    const res = await raw(
      stack,
      { model: 'up', messages: userSays('a b'), stream: true, ...mark },
      { key, path: CHAT },
    );
    expect(res.status).toBe(200);
    const sse = parseSse(res.text);
    expect(sse.usageChunks).toEqual([]);
    expect(sse.events.every((e) => !('usage' in e))).toBe(true);
    const text = sse.chunks
      .map((c) =>
        (c.choices as unknown as { delta: { content?: string } }[]).map((x) => x.delta.content ?? '').join(''),
      )
      .join('');
    expect(text).toBe(fakeUpstreamText('a b'));
    const seen = upstream.requests.find((r) => r.body.probe === mark.probe);
    expect(seen?.body).toMatchObject({ model: 'fake-model', stream: true, stream_options: { include_usage: true } });
  });

  it('rejects invalid requests before they reach the upstream', async () => {
    const mark = probe();
    const res = await raw(
      stack,
      { model: 'up', messages: [{ role: 'wizard', content: 'x' }], ...mark },
      { key, path: CHAT },
    );
    expect(res.status).toBe(400);
    await new Promise((r) => setTimeout(r, 200));
    expect(upstream.requests.some((r) => r.body.probe === mark.probe)).toBe(false);
  });
});
