import type OpenAI from 'openai';
import {
  APIError,
  AuthenticationError,
  BadRequestError,
  InternalServerError,
  NotFoundError,
  PermissionDeniedError,
} from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { expectOpenAIError, raw, rejection, sdk } from '../support/contract-helpers';
import { simulatorDeployment, writeModelList } from '../support/router-config';
import { Stack } from '../support/stack';

const MAX_BODY = 65_536;

/**
 * Contract: the HTTP surface around /v1/completions and /v1/models. Body handling
 * (415/400/413), auth and model errors, unknown routes (404) and wrong methods (405 with
 * Allow), all as OpenAI error objects; `x-request-id` everywhere; the models endpoints.
 */
describe('contract: HTTP surface', () => {
  let stack: Stack;
  let key: string;
  let client: OpenAI;

  beforeAll(async () => {
    const config = writeModelList(
      simulatorDeployment('echo', 'echo', {}, { aliases: ['echo-alias'] }),
      simulatorDeployment('multi', 'echo'),
      simulatorDeployment('multi', 'lorem'),
      simulatorDeployment('org/slashed', 'echo'),
    );
    stack = await Stack.start('contract-http', {
      routerConfig: config,
      env: { AQUEDUCT_MAX_BODY_BYTES: String(MAX_BODY) },
    });
    key = await stack.createKey();
    client = sdk(stack, key);
  });

  afterAll(async () => {
    await stack?.stop();
  });

  const ok = { model: 'echo', prompt: 'a b' };

  describe('request bodies', () => {
    it.each<{ name: string; headers: Record<string, string> }>([
      { name: 'text/plain', headers: { 'content-type': 'text/plain' } },
      { name: 'form-urlencoded', headers: { 'content-type': 'application/x-www-form-urlencoded' } },
      { name: 'no content type', headers: {} },
    ])('415 for a JSON body sent as $name', async ({ headers }) => {
      const res = await raw(stack, undefined, { key, headers, rawBody: JSON.stringify(ok) });
      expectOpenAIError(res, 415, { type: 'invalid_request_error', param: null, message: /application\/json/ });
    });

    it.each(['{"model": "echo", "prompt": ', '{model: echo}', '{"a":1}}', 'nul'])(
      '400 for malformed JSON %j',
      async (text) => {
        const res = await raw(stack, undefined, {
          key,
          headers: { 'content-type': 'application/json' },
          rawBody: text,
        });
        expectOpenAIError(res, 400, { type: 'invalid_request_error', param: null, message: /parse the JSON body/ });
      },
    );

    it.each(['[]', '[{"model":"echo","prompt":"a"}]', '"a string"', 'null', '42', 'true'])(
      '400 for a body that is not an object: %s',
      async (text) => {
        const res = await raw(stack, undefined, {
          key,
          headers: { 'content-type': 'application/json' },
          rawBody: text,
        });
        expectOpenAIError(res, 400, { type: 'invalid_request_error', message: /must be a JSON object/ });
      },
    );

    it('413 for a body over AQUEDUCT_MAX_BODY_BYTES, from raw HTTP and the SDK', async () => {
      const big = { model: 'echo', prompt: 'x'.repeat(MAX_BODY + 10) };
      const res = await raw(stack, big, { key });
      expectOpenAIError(res, 413, { type: 'invalid_request_error', message: new RegExp(String(MAX_BODY)) });
      const err = await rejection(client.completions.create(big));
      expect(err.status).toBe(413);
      expect(err.type).toBe('invalid_request_error');
    });

    it('accepts a body just under the limit', async () => {
      const prompt = 'y'.repeat(MAX_BODY - 200);
      const res = await raw(stack, { model: 'echo', prompt, max_tokens: 1 }, { key });
      expect(res.status, res.text.slice(0, 300)).toBe(200);
      expect((res.json as { choices: { text: string }[] }).choices[0]?.text).toBe(` ${prompt}`);
    });
  });

  describe('auth and model errors', () => {
    it('401 with code null when the key is missing', async () => {
      const res = await raw(stack, ok);
      expectOpenAIError(res, 401, { type: 'invalid_request_error', code: null, message: /API key/ });
    });

    it.each([
      { name: 'an unknown key', authorization: 'Bearer sk-aq-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA' },
      { name: 'a malformed Authorization header', authorization: 'Basic dXNlcjpwYXNz' },
      { name: 'an empty bearer', authorization: 'Bearer ' },
    ])('401 invalid_api_key for $name, never echoing the key', async ({ authorization }) => {
      const res = await raw(stack, ok, { headers: { authorization } });
      expectOpenAIError(res, 401, { type: 'invalid_request_error', code: 'invalid_api_key' });
      expect(res.text).not.toContain('AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA');
    });

    it('the SDK raises AuthenticationError for a wrong key', async () => {
      const err = await rejection(sdk(stack, 'sk-aq-wrong').completions.create(ok));
      expect(err).toBeInstanceOf(AuthenticationError);
      expect(err.code).toBe('invalid_api_key');
    });

    it('403 PermissionDeniedError for a model outside the allow-list, streamed or not', async () => {
      const limited = sdk(stack, await stack.createKey({ models: ['echo'] }));
      const res = await raw(stack, { ...ok, model: 'multi' }, { key: limited.apiKey });
      expectOpenAIError(res, 403, { param: 'model', code: 'model_not_allowed', message: /multi/ });
      for (const stream of [false, true]) {
        const err = await rejection(limited.completions.create({ ...ok, model: 'multi', stream }));
        expect(err).toBeInstanceOf(PermissionDeniedError);
      }
      await expect(limited.completions.create(ok)).resolves.toMatchObject({ object: 'text_completion' });
    });

    it('404 model_not_found for an unknown model, streamed or not', async () => {
      const res = await raw(stack, { ...ok, model: 'no-such-model' }, { key });
      expectOpenAIError(res, 404, {
        type: 'invalid_request_error',
        param: 'model',
        code: 'model_not_found',
        message: /no-such-model/,
      });
      for (const stream of [false, true]) {
        const err = await rejection(client.completions.create({ ...ok, model: 'no-such-model', stream }));
        expect(err).toBeInstanceOf(NotFoundError);
        expect(err.code).toBe('model_not_found');
      }
    });

    it('an alias is served as its model', async () => {
      const res = await client.completions.create({ ...ok, model: 'echo-alias' });
      expect(res.model).toBe('echo');
      expect(res.choices[0]?.text).toBe(' a b');
    });

    it('validation comes back as BadRequestError from the SDK', async () => {
      const err = await rejection(client.completions.create({ ...ok, temperature: 3 }));
      expect(err).toBeInstanceOf(BadRequestError);
      expect(err.param).toBe('temperature');
    });
  });

  describe('routes', () => {
    it.each([
      ['GET', '/v1/nope'],
      ['POST', '/v1/responses'],
      ['GET', '/'],
      ['POST', '/v2/completions'],
      ['GET', '/v1/completions/extra'],
    ])('404 JSON for the unknown route %s %s', async (method, path) => {
      const res = await raw(stack, method === 'POST' ? ok : undefined, { key, method, path });
      expectOpenAIError(res, 404, { type: 'invalid_request_error', message: [/Invalid URL/, new RegExp(path)] });
    });

    it.each([
      { name: 'a text/plain body', type: 'text/plain', body: 'hello' },
      { name: 'malformed JSON', type: 'application/json', body: '{"model":' },
    ])('404 (not a body error) for an unknown route sent $name', async ({ type, body }) => {
      const res = await raw(stack, undefined, {
        key,
        path: '/v1/responses',
        headers: { 'content-type': type },
        rawBody: body,
      });
      expectOpenAIError(res, 404, { type: 'invalid_request_error', message: /Invalid URL/ });
    });

    it.each([
      ['GET', '/v1/completions', 'POST'],
      ['PUT', '/v1/completions', 'POST'],
      ['DELETE', '/completions', 'POST'],
      ['DELETE', '/v1/models', 'GET'],
      ['POST', '/v1/models', 'GET'],
      ['DELETE', '/v1/models/echo', 'GET'],
      ['POST', '/health', 'GET'],
    ])('405 with Allow for %s %s', async (method, path, allowed) => {
      const body = method === 'GET' || method === 'DELETE' ? undefined : ok;
      const res = await raw(stack, body, { key, method, path });
      expectOpenAIError(res, 405, { type: 'invalid_request_error', message: new RegExp(method) });
      const allow = (res.headers.get('allow') ?? '').split(/,\s*/);
      expect(allow).toContain(allowed);
      expect(allow).not.toContain(method);
    });

    it('the SDK sees a 405 as an APIError with status 405', async () => {
      const err = await rejection(client.get('/completions'));
      expect(err).toBeInstanceOf(APIError);
      expect(err.status).toBe(405);
    });
  });

  describe('x-request-id and SSE headers', () => {
    it.each([
      { name: 'a completion', method: 'POST', path: '/v1/completions', body: ok, status: 200 },
      { name: 'a stream', method: 'POST', path: '/v1/completions', body: { ...ok, stream: true }, status: 200 },
      { name: 'a 400', method: 'POST', path: '/v1/completions', body: { ...ok, n: 0 }, status: 400 },
      { name: 'a 401', method: 'POST', path: '/v1/completions', body: ok, status: 401, noKey: true },
      { name: 'a 404 model', method: 'POST', path: '/v1/completions', body: { ...ok, model: 'x' }, status: 404 },
      { name: 'a 404 route', method: 'GET', path: '/nowhere', status: 404 },
      { name: 'a 405', method: 'GET', path: '/v1/completions', status: 405 },
      {
        name: 'a 413',
        method: 'POST',
        path: '/v1/completions',
        body: { ...ok, prompt: 'z'.repeat(MAX_BODY) },
        status: 413,
      },
      { name: 'the model list', method: 'GET', path: '/v1/models', status: 200 },
      { name: 'health', method: 'GET', path: '/health', status: 200 },
    ])('on $name', async ({ method, path, body, status, noKey }) => {
      const [a, b] = await Promise.all([0, 1].map(() => raw(stack, body, { key: noKey ? null : key, method, path })));
      expect(a?.status).toBe(status);
      expect(a?.headers.get('x-request-id')).toMatch(/^[0-9a-f]{32}$/);
      expect(b?.headers.get('x-request-id')).toMatch(/^[0-9a-f]{32}$/);
      expect(a?.headers.get('x-request-id')).not.toBe(b?.headers.get('x-request-id'));
    });

    it('415 also carries x-request-id', async () => {
      const res = await raw(stack, undefined, { key, headers: { 'content-type': 'text/plain' }, rawBody: 'x' });
      expect(res.status).toBe(415);
      expect(res.headers.get('x-request-id')).toMatch(/^[0-9a-f]{32}$/);
    });

    it('the SDK exposes the request id on results and on errors', async () => {
      const { data, request_id } = await client.completions.create(ok).withResponse();
      expect(request_id).toMatch(/^[0-9a-f]{32}$/);
      expect(data.id).toContain(request_id ?? 'missing');
      const err = await rejection(client.completions.create({ ...ok, model: 'x' }));
      expect(err.requestID).toMatch(/^[0-9a-f]{32}$/);
    });

    it('a stream has text/event-stream, Cache-Control: no-cache and X-Accel-Buffering: no', async () => {
      const res = await raw(stack, { ...ok, stream: true }, { key });
      expect(res.status).toBe(200);
      expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/);
      expect(res.headers.get('cache-control')).toMatch(/\bno-cache\b/);
      expect(res.headers.get('x-accel-buffering')).toBe('no');
    });
  });

  describe('models', () => {
    type ModelObject = { id: string; object: string; created: number; owned_by: string };

    it('lists each model once, whatever its number of deployments, owned_by aqueduct, created stable', async () => {
      const first = await raw(stack, undefined, { key, method: 'GET', path: '/v1/models' });
      const second = await raw(stack, undefined, { key, method: 'GET', path: '/models' });
      expect(first.status).toBe(200);
      const list = first.json as { object: string; data: ModelObject[] };
      expect(list.object).toBe('list');
      expect(list.data.map((m) => m.id)).toEqual(['echo', 'multi', 'org/slashed']);
      for (const m of list.data) {
        expect(Object.keys(m).sort()).toEqual(['created', 'id', 'object', 'owned_by']);
        expect(m).toMatchObject({ object: 'model', owned_by: 'aqueduct' });
        expect(Number.isInteger(m.created) && m.created > 1_600_000_000).toBe(true);
      }
      expect(second.json).toEqual(first.json);
      const page = await client.models.list();
      expect(page.data).toEqual(list.data);
    });

    it('retrieves a model by id, with the same object as the list', async () => {
      const listed = (await client.models.list()).data.find((m) => m.id === 'echo');
      const model = await client.models.retrieve('echo');
      expect(model).toEqual(listed);
      expect(model).toMatchObject({ id: 'echo', object: 'model', owned_by: 'aqueduct' });
      expect((await client.models.retrieve('echo')).created).toBe(model.created);
    });

    it('an alias retrieves its model', async () => {
      const model = await client.models.retrieve('echo-alias');
      expect(model.id).toBe('echo');
    });

    it('a model id containing a slash is retrievable, raw and through the SDK', async () => {
      const res = await raw(stack, undefined, { key, method: 'GET', path: '/v1/models/org/slashed' });
      expect(res.status, res.text).toBe(200);
      expect((res.json as ModelObject).id).toBe('org/slashed');
      expect((await client.models.retrieve('org/slashed')).id).toBe('org/slashed');
    });

    it('404 NotFoundError model_not_found for an unknown model id', async () => {
      const res = await raw(stack, undefined, { key, method: 'GET', path: '/v1/models/ghost' });
      expectOpenAIError(res, 404, { type: 'invalid_request_error', code: 'model_not_found', message: /ghost/ });
      const err = await rejection(client.models.retrieve('ghost'));
      expect(err).toBeInstanceOf(NotFoundError);
      expect(err.code).toBe('model_not_found');
    });

    it('a restricted key lists only its models and cannot retrieve the others', async () => {
      const limited = sdk(stack, await stack.createKey({ models: ['multi'] }));
      expect((await limited.models.list()).data.map((m) => m.id)).toEqual(['multi']);
      expect(await rejection(limited.models.retrieve('echo'))).toBeInstanceOf(NotFoundError);
    });

    it('401 without a key', async () => {
      const res = await raw(stack, undefined, { method: 'GET', path: '/v1/models' });
      expectOpenAIError(res, 401, { type: 'invalid_request_error' });
    });
  });

  // Runs last: it stops the stack's only worker.
  describe('without a live worker', () => {
    it('503 server_error with Retry-After instead of queueing into the void, streamed or not', async () => {
      await stack.workers[0]?.stop();
      const until = Date.now() + 10_000;
      while ((await raw(stack, undefined, { method: 'GET', path: '/ready' })).status !== 503 && Date.now() < until) {
        await new Promise((r) => setTimeout(r, 100));
      }
      for (const stream of [false, true]) {
        const res = await raw(stack, { ...ok, stream }, { key });
        expectOpenAIError(res, 503, { type: 'server_error', message: /worker/ });
        expect(Number(res.headers.get('retry-after'))).toBeGreaterThan(0);
        expect(await rejection(client.completions.create({ ...ok, stream }))).toBeInstanceOf(InternalServerError);
      }
    });
  });
});
