import type OpenAI from 'openai';
import { BadRequestError } from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  contractModels,
  expectOpenAIError,
  invalidCases,
  NOT_MISSING,
  probe,
  raw,
  rejection,
  sdk,
} from '../support/contract-helpers';
import type { FakeUpstream } from '../support/fake-upstream';
import type { Stack } from '../support/stack';
import { startUpstreamStack } from '../support/upstream-stack';

/**
 * Contract: every /v1/completions request parameter is validated with its OpenAI type,
 * range and default, and the cross-field rules hold; a violation is a 400
 * invalid_request_error whose `param` names the field and whose message says what is wrong.
 * Valid edge values are accepted, and unknown fields reach the upstream untouched.
 */
describe('contract: completion request parameters', () => {
  let upstream: FakeUpstream;
  let stack: Stack;
  let key: string;
  let client: OpenAI;

  beforeAll(async () => {
    ({ upstream, stack, key } = await startUpstreamStack('contract-params', {}, contractModels));
    client = sdk(stack, key);
  });

  afterAll(async () => {
    await stack?.stop();
    await upstream?.close();
  });

  const base = { model: 'echo', prompt: 'hello world' };
  const bad = invalidCases(base);

  const invalid = [
    bad('model missing', { model: undefined }, 'model', /Missing required parameter: 'model'/),
    bad('model not a string', { model: 42 }, 'model', /'model'/, /string/, NOT_MISSING),
    bad('model empty', { model: '' }, 'model', /'model'/, /empty/),
    bad('prompt missing', { prompt: undefined }, 'prompt', /'prompt'/),
    bad('prompt empty string', { prompt: '' }, 'prompt', /'prompt'/, /empty/),
    bad('prompt empty array', { prompt: [] }, 'prompt', /'prompt'/, /non-empty/),
    bad('prompt [[]]', { prompt: [[]] }, 'prompt', /'prompt\[0\]'/, /empty/),
    bad('prompt negative token id', { prompt: [1, -1] }, 'prompt', /'prompt\[1\]'/, /≥ 0/),
    bad('prompt fractional token id', { prompt: [1.5] }, 'prompt', /'prompt'/, /token ids/),
    bad('prompt mixed array', { prompt: ['a', 1] }, 'prompt', /'prompt'/, /array of strings/),
    bad('prompt object', { prompt: { text: 'x' } }, 'prompt', /'prompt'/, /string/),
    bad('suffix not a string', { suffix: 5 }, 'suffix', /'suffix'/, /string/, NOT_MISSING),
    bad('max_tokens -1', { max_tokens: -1 }, 'max_tokens', /'max_tokens'/, />=\s*0/),
    bad('max_tokens 1.5', { max_tokens: 1.5 }, 'max_tokens', /'max_tokens'/, /int/, NOT_MISSING),
    bad('max_tokens "10"', { max_tokens: '10' }, 'max_tokens', /'max_tokens'/, /number|int/, NOT_MISSING),
    bad('temperature 2.1', { temperature: 2.1 }, 'temperature', /'temperature'/, /<=\s*2/),
    bad('temperature -0.1', { temperature: -0.1 }, 'temperature', /'temperature'/, />=\s*0/),
    bad('temperature "hot"', { temperature: 'hot' }, 'temperature', /'temperature'/, /number/, NOT_MISSING),
    bad('top_p 1.1', { top_p: 1.1 }, 'top_p', /'top_p'/, /<=\s*1/),
    bad('top_p -0.5', { top_p: -0.5 }, 'top_p', /'top_p'/, />=\s*0/),
    bad('n 0', { n: 0 }, 'n', /'n'/, />=\s*1/),
    bad('n 129', { n: 129 }, 'n', /'n'/, /<=\s*128/),
    bad('n 2.5', { n: 2.5 }, 'n', /'n'/, /int/, NOT_MISSING),
    bad('stream "true"', { stream: 'true' }, 'stream', /'stream'/, /bool/, NOT_MISSING),
    bad(
      'stream_options without stream',
      { stream_options: { include_usage: true } },
      'stream_options',
      /only allowed when 'stream' is enabled/,
    ),
    bad(
      'stream_options with stream false',
      { stream: false, stream_options: {} },
      'stream_options',
      /only allowed when 'stream' is enabled/,
    ),
    bad(
      'stream_options.include_usage "yes"',
      { stream: true, stream_options: { include_usage: 'yes' } },
      'stream_options',
      /'stream_options.include_usage'/,
      /bool/,
      NOT_MISSING,
    ),
    bad('logprobs 6', { logprobs: 6 }, 'logprobs', /'logprobs'/, /<=\s*5/),
    bad('logprobs -1', { logprobs: -1 }, 'logprobs', /'logprobs'/, />=\s*0/),
    bad('logprobs true', { logprobs: true }, 'logprobs', /'logprobs'/, /number|int/, NOT_MISSING),
    bad('echo "yes"', { echo: 'yes' }, 'echo', /'echo'/, /bool/, NOT_MISSING),
    bad('stop with 5 sequences', { stop: ['a', 'b', 'c', 'd', 'e'] }, 'stop', /'stop'/, /4/),
    bad('stop empty array', { stop: [] }, 'stop', /'stop'/),
    bad('stop number', { stop: 5 }, 'stop', /'stop'/, /string/),
    bad('stop [1]', { stop: [1] }, 'stop', /'stop'/, /string/),
    bad('presence_penalty 2.5', { presence_penalty: 2.5 }, 'presence_penalty', /'presence_penalty'/, /<=\s*2/),
    bad('presence_penalty -3', { presence_penalty: -3 }, 'presence_penalty', /'presence_penalty'/, />=\s*-2/),
    bad('frequency_penalty -2.5', { frequency_penalty: -2.5 }, 'frequency_penalty', /'frequency_penalty'/, />=\s*-2/),
    bad('frequency_penalty 3', { frequency_penalty: 3 }, 'frequency_penalty', /'frequency_penalty'/, /<=\s*2/),
    bad('best_of 21', { best_of: 21 }, 'best_of', /'best_of'/, /<=\s*20/),
    bad('best_of < n', { best_of: 2, n: 3 }, 'best_of', /'best_of'/, /greater than or equal to n/),
    bad('best_of > 1 with stream', { best_of: 2, stream: true }, 'best_of', /'best_of'/, /cannot be streamed/),
    bad('logit_bias key not a token id', { logit_bias: { abc: 1 } }, 'logit_bias', /'logit_bias/, /key/),
    bad('logit_bias value 101', { logit_bias: { '50256': 101 } }, 'logit_bias', /'logit_bias/, /<=\s*100/),
    bad('logit_bias value -101', { logit_bias: { '50256': -101 } }, 'logit_bias', /'logit_bias/, />=\s*-100/),
    bad('logit_bias not an object', { logit_bias: 'x' }, 'logit_bias', /'logit_bias'/, /record|object/, NOT_MISSING),
    bad('seed 1.5', { seed: 1.5 }, 'seed', /'seed'/, /int/, NOT_MISSING),
    bad('seed "1"', { seed: '1' }, 'seed', /'seed'/, /number|int/, NOT_MISSING),
    bad('user not a string', { user: 5 }, 'user', /'user'/, /string/, NOT_MISSING),
    bad('user_id boolean', { user_id: true }, 'user_id', /'user_id'/),
  ];

  it.each(invalid)('400 for $name (param $param)', async ({ body, param, message }) => {
    const res = await raw(stack, body, { key });
    expectOpenAIError(res, 400, { type: 'invalid_request_error', param, message });
  });

  it.each([
    { name: 'n out of range', body: { ...base, n: 0 }, param: 'n' },
    {
      name: 'stream_options without stream',
      body: { ...base, stream_options: { include_usage: true } },
      param: 'stream_options',
    },
    { name: 'too many stops', body: { ...base, stop: ['1', '2', '3', '4', '5'] }, param: 'stop' },
    { name: 'best_of with stream', body: { ...base, stream: true, best_of: 3 }, param: 'best_of' },
  ])('the SDK raises BadRequestError for $name', async ({ body, param }) => {
    const err = await rejection(client.completions.create(body as unknown as OpenAI.CompletionCreateParams));
    expect(err).toBeInstanceOf(BadRequestError);
    expect(err.status).toBe(400);
    expect(err.type).toBe('invalid_request_error');
    expect(err.param).toBe(param);
    expect(err.message).toMatch(new RegExp(param));
    expect(err.requestID).toMatch(/\S/);
  });

  const valid: { name: string; body: Record<string, unknown>; choices?: number; stream?: boolean }[] = [
    { name: 'temperature 0', body: { temperature: 0 } },
    { name: 'temperature 2', body: { temperature: 2 } },
    { name: 'top_p 0', body: { top_p: 0 } },
    { name: 'top_p 1', body: { top_p: 1 } },
    { name: 'n 128', body: { n: 128 }, choices: 128 },
    { name: 'max_tokens 0', body: { max_tokens: 0 } },
    { name: 'logprobs 0', body: { logprobs: 0 } },
    { name: 'logprobs 5', body: { logprobs: 5 } },
    { name: 'penalties at -2', body: { presence_penalty: -2, frequency_penalty: -2 } },
    { name: 'penalties at 2', body: { presence_penalty: 2, frequency_penalty: 2 } },
    { name: 'best_of 20 with n 20', body: { best_of: 20, n: 20 }, choices: 20 },
    { name: 'best_of 1 with stream', body: { best_of: 1, stream: true }, stream: true },
    { name: 'stop with 4 sequences', body: { stop: ['w', 'x', 'y', 'z'] } },
    { name: 'stop as a string', body: { stop: 'zzz' } },
    { name: 'logit_bias at ±100', body: { logit_bias: { '50256': -100, '11': 100 } } },
    { name: 'seed negative', body: { seed: -1 } },
    { name: 'seed large', body: { seed: Number.MAX_SAFE_INTEGER } },
    // A valid int64 (OpenAI: int64; vLLM checks the int64 range), exactly representable as a double.
    { name: 'seed 2^62 (int64)', body: { seed: 2 ** 62 } },
    { name: 'suffix', body: { suffix: ' the end' } },
    { name: 'user', body: { user: 'end-user-1' } },
    { name: 'user_id string', body: { user_id: 'u-1' } },
    { name: 'user_id number', body: { user_id: 17 } },
    { name: 'prompt as string[]', body: { prompt: ['a', 'b c'] }, choices: 2 },
    { name: 'prompt as int[] (one prompt)', body: { prompt: [1, 2, 3] }, choices: 1 },
    { name: 'prompt as int[][] (a batch)', body: { prompt: [[1], [2, 3], [0]] }, choices: 3 },
    { name: 'stream with stream_options null', body: { stream: true, stream_options: null }, stream: true },
    { name: 'stream with stream_options {}', body: { stream: true, stream_options: {} }, stream: true },
    {
      // openai-node's own type for it (ChatCompletionStreamOptions) has include_obfuscation.
      name: 'stream_options with include_obfuscation (an SDK-typed field)',
      body: { stream: true, stream_options: { include_usage: true, include_obfuscation: false } },
      stream: true,
    },
    {
      name: 'every optional parameter null (null means the default)',
      body: {
        suffix: null,
        max_tokens: null,
        temperature: null,
        top_p: null,
        n: null,
        stream: null,
        stream_options: null,
        logprobs: null,
        echo: null,
        stop: null,
        presence_penalty: null,
        frequency_penalty: null,
        best_of: null,
        logit_bias: null,
        seed: null,
        user: null,
      },
    },
  ];

  it.each(valid)('accepts $name', async ({ body, choices, stream }) => {
    const res = await raw(stack, { ...base, ...body }, { key });
    expect(res.status, res.text).toBe(200);
    if (stream === true) {
      expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/);
      expect(res.text.trimEnd().endsWith('data: [DONE]')).toBe(true);
      return;
    }
    const json = res.json as { object: string; choices: unknown[] };
    expect(json.object).toBe('text_completion');
    expect(json.choices).toHaveLength(choices ?? 1);
  });

  it('accepts an application/json content type with a charset', async () => {
    const res = await raw(stack, base, { key, headers: { 'content-type': 'application/json; charset=utf-8' } });
    expect(res.status, res.text).toBe(200);
  });

  it('applies the defaults: max_tokens 16, n 1, echo false, logprobs null, not streamed', async () => {
    const words = Array.from({ length: 30 }, (_, i) => `w${i}`);
    const res = await raw(stack, { model: 'echo', prompt: words.join(' ') }, { key });
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^application\/json/);
    const json = res.json as {
      choices: { index: number; text: string; logprobs: unknown; finish_reason: string }[];
      usage: { completion_tokens: number };
    };
    expect(json.choices).toEqual([
      {
        index: 0,
        text: words
          .slice(0, 16)
          .map((w) => ` ${w}`)
          .join(''),
        logprobs: null,
        finish_reason: 'length',
      },
    ]);
    expect(json.usage.completion_tokens).toBe(16);
  });

  it('forwards every OpenAI parameter and the allowed extensions as sent, but not user_id', async () => {
    const mark = probe();
    const sent = {
      prompt: 'one two',
      suffix: '!',
      max_tokens: 7,
      temperature: 0.3,
      top_p: 0.9,
      n: 2,
      logprobs: 2,
      echo: true,
      stop: ['\n', 'END'],
      presence_penalty: 0.5,
      frequency_penalty: -0.5,
      best_of: 3,
      logit_bias: { '50256': -100 },
      seed: 42,
      user: 'u-9',
      top_k: 5,
      repetition_penalty: 1.1,
      guided_json: { type: 'object', properties: { a: { type: 'array' } } },
      ...mark,
    };
    const res = await raw(stack, { model: 'up', user_id: 'end-user-7', ...sent }, { key });
    expect(res.status, res.text).toBe(200);
    const forwarded = upstream.requests.find((r) => r.body.probe === mark.probe);
    expect(forwarded?.body).toEqual({ ...sent, model: 'fake-model', stream: false });
    expect(forwarded?.body).not.toHaveProperty('user_id');
    expect(forwarded?.body).not.toHaveProperty('stream_options');
  });

  it('drops fields that are neither OpenAI parameters nor in the deployment extra_body_allowed', async () => {
    const mark = probe();
    const res = await raw(
      stack,
      { model: 'up', prompt: 'x', max_tokens: 2, access_token: key, vllm_private: { x: 1 }, top_k: 2, ...mark },
      { key },
    );
    expect(res.status, res.text).toBe(200);
    const forwarded = upstream.requests.find((r) => r.body.probe === mark.probe);
    expect(forwarded?.body).toMatchObject({ prompt: 'x', max_tokens: 2, top_k: 2 });
    expect(forwarded?.body).not.toHaveProperty('access_token');
    expect(forwarded?.body).not.toHaveProperty('vllm_private');
    // Nor does the simulator (or any other model without extensions) get them into its job.
    const sim = await raw(stack, { model: 'echo', prompt: 'x', max_tokens: 2, top_k: 2 }, { key });
    expect(sim.status, sim.text).toBe(200);
  });

  it('forwards a stream with include_usage for accounting, and numeric user_id is accepted and dropped', async () => {
    const mark = probe();
    const stream = await client.completions.create({
      model: 'up',
      prompt: 'a b',
      stream: true,
      ...({ user_id: 123, top_k: 3, ...mark } as Record<string, unknown>),
    });
    let text = '';
    for await (const chunk of stream) {
      text += chunk.choices.map((c) => c.text).join('');
    }
    expect(text).toBe(' echo: a b');
    const forwarded = upstream.requests.find((r) => r.body.probe === mark.probe);
    expect(forwarded?.body).toMatchObject({ model: 'fake-model', stream: true, top_k: 3 });
    expect(forwarded?.body.stream_options).toEqual({ include_usage: true });
    expect(forwarded?.body).not.toHaveProperty('user_id');
  });

  it('rejects invalid requests before they reach the upstream', async () => {
    const mark = probe();
    const res = await raw(stack, { model: 'up', prompt: 'x', n: 0, ...mark }, { key });
    expect(res.status).toBe(400);
    await new Promise((r) => setTimeout(r, 200));
    expect(upstream.requests.some((r) => r.body.probe === mark.probe)).toBe(false);
  });
});
