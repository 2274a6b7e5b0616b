import type OpenAI from 'openai';
import { BadRequestError, InternalServerError, RateLimitError } from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  chatModels,
  decodeBase64Embedding,
  expectOpenAIError,
  norm,
  probe,
  raw,
  rejection,
  sdk,
} from '../support/contract-helpers';
import { FAKE_EMBEDDING_DIMENSIONS, type FakeUpstream, fakeEmbedding } from '../support/fake-upstream';
import type { Stack } from '../support/stack';
import { startUpstreamStack } from '../support/upstream-stack';

const EMBEDDINGS = '/v1/embeddings';

interface EmbeddingList {
  object: string;
  data: { object: string; index: number; embedding: number[] | string }[];
  model: string;
  usage: { prompt_tokens: number; total_tokens: number };
}

/** The two backends: their model, default dimensions and (upstream) the exact vector expected. */
const BACKENDS: {
  name: string;
  model: string;
  dims: number;
  expected?: (input: string | number[], dims?: number) => number[];
}[] = [
  { name: 'simulator', model: 'embed', dims: 256 },
  { name: 'upstream', model: 'up-embed', dims: FAKE_EMBEDDING_DIMENSIONS, expected: fakeEmbedding },
];

const floats = (list: EmbeddingList) => list.data.map((d) => d.embedding as number[]);

/**
 * Contract: /v1/embeddings takes a string, strings, token ids or token-id arrays and answers
 * OpenAI's list shape (`object: "list"`, `data[i] = {object: "embedding", index: i,
 * embedding}`, usage prompt/total tokens) on both backends: deterministic unit vectors, in
 * input order, `dimensions` honoured, float by default and base64 (little-endian float32)
 * on request, which the SDK decodes by default. Invalid input is a 400 naming the field;
 * the upstream receives the parameters as sent, and its failures map as for completions.
 */
describe('contract: embeddings', () => {
  let upstream: FakeUpstream;
  let stack: Stack;
  let key: string;
  let client: OpenAI;

  beforeAll(async () => {
    ({ upstream, stack, key } = await startUpstreamStack('contract-embeddings', {}, chatModels));
    client = sdk(stack, key);
  });

  afterAll(async () => {
    await stack?.stop();
    await upstream?.close();
  });

  /** A raw embeddings request, checked for OpenAI's exact response shape. */
  async function embed(body: Record<string, unknown>, path = EMBEDDINGS): Promise<EmbeddingList> {
    const res = await raw(stack, body, { key, path });
    expect(res.status, res.text.slice(0, 500)).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^application\/json/);
    expect(res.headers.get('x-request-id')).toMatch(/\S/);
    const list = res.json as EmbeddingList;
    expect(Object.keys(list).sort()).toEqual(['data', 'model', 'object', 'usage']);
    expect(list.object).toBe('list');
    expect(list.model).toBe(body.model);
    list.data.forEach((d, i) => {
      expect(Object.keys(d).sort()).toEqual(['embedding', 'index', 'object']);
      expect(d.object).toBe('embedding');
      expect(d.index).toBe(i);
    });
    expect(Object.keys(list.usage).sort()).toEqual(['prompt_tokens', 'total_tokens']);
    expect(Number.isInteger(list.usage.prompt_tokens)).toBe(true);
    expect(list.usage.prompt_tokens).toBeGreaterThan(0);
    expect(list.usage.total_tokens).toBe(list.usage.prompt_tokens);
    return list;
  }

  function expectUnitVector(v: number[] | string | undefined, dims: number): number[] {
    expect(Array.isArray(v), `a float array, got ${typeof v}`).toBe(true);
    const vector = v as number[];
    expect(vector).toHaveLength(dims);
    expect(vector.every((x) => typeof x === 'number' && Number.isFinite(x))).toBe(true);
    expect(Math.abs(norm(vector) - 1)).toBeLessThan(1e-4);
    return vector;
  }

  describe.each(BACKENDS)('$name', (b) => {
    it('a string: one deterministic unit vector of the default dimensions', async () => {
      const first = await embed({ model: b.model, input: 'the quick brown fox' });
      expect(first.data).toHaveLength(1);
      const v = expectUnitVector(first.data[0]?.embedding, b.dims);
      const again = await embed({ model: b.model, input: 'the quick brown fox' });
      expect(again.data[0]?.embedding).toEqual(v);
      expect(again.usage).toEqual(first.usage);
      const other = await embed({ model: b.model, input: 'a lazy dog' });
      expect(other.data[0]?.embedding).not.toEqual(v);
      if (b.expected !== undefined) {
        expect(v).toEqual(b.expected('the quick brown fox'));
        expect(first.usage).toEqual({ prompt_tokens: 4, total_tokens: 4 });
      }
    });

    it('also on /embeddings (without /v1)', async () => {
      const list = await embed({ model: b.model, input: 'route' }, '/embeddings');
      expect(list.data[0]?.embedding).toEqual((await embed({ model: b.model, input: 'route' })).data[0]?.embedding);
    });

    it('strings: one vector per input, in input order, each the same as alone; usage adds up', async () => {
      const inputs = ['alpha', 'beta gamma', 'delta epsilon zeta'];
      const batch = await embed({ model: b.model, input: inputs });
      expect(batch.data).toHaveLength(3);
      const singles = await Promise.all(inputs.map((input) => embed({ model: b.model, input })));
      floats(batch).forEach((v, i) => {
        expectUnitVector(v, b.dims);
        expect(v).toEqual(singles[i]?.data[0]?.embedding);
        if (b.expected !== undefined) {
          expect(v).toEqual(b.expected(inputs[i] ?? ''));
        }
      });
      expect(new Set(floats(batch).map((v) => JSON.stringify(v))).size).toBe(3);
      expect(batch.usage.prompt_tokens).toBe(singles.reduce((sum, s) => sum + s.usage.prompt_tokens, 0));
    });

    it('token ids: an int[] is one input, an int[][] is a batch', async () => {
      const one = await embed({ model: b.model, input: [1, 2, 3] });
      expect(one.data).toHaveLength(1);
      expectUnitVector(one.data[0]?.embedding, b.dims);
      const batch = await embed({ model: b.model, input: [[1, 2, 3], [4], [5, 6]] });
      expect(batch.data).toHaveLength(3);
      expect(batch.data[0]?.embedding).toEqual(one.data[0]?.embedding);
      expect(batch.data[1]?.embedding).not.toEqual(batch.data[2]?.embedding);
      expect(batch.usage.prompt_tokens).toBeGreaterThan(one.usage.prompt_tokens);
      if (b.expected !== undefined) {
        expect(one.data[0]?.embedding).toEqual(b.expected([1, 2, 3]));
        expect(batch.data[2]?.embedding).toEqual(b.expected([5, 6]));
        expect(one.usage.prompt_tokens).toBe(3);
        expect(batch.usage.prompt_tokens).toBe(6);
      }
    });

    it('dimensions: vectors of that length, still unit length', async () => {
      for (const dimensions of [1, 8, 64]) {
        const list = await embed({ model: b.model, input: ['dims', 'more dims'], dimensions });
        for (const v of floats(list)) {
          expectUnitVector(v, dimensions);
        }
        if (b.expected !== undefined) {
          expect(floats(list)[1]).toEqual(b.expected('more dims', dimensions));
        }
      }
    });

    it('encoding_format base64 (raw HTTP): little-endian float32 of the float vector', async () => {
      const inputs = ['encode me', 'and me'];
      const asFloat = floats(await embed({ model: b.model, input: inputs, encoding_format: 'float' }));
      const asDefault = floats(await embed({ model: b.model, input: inputs }));
      expect(asDefault).toEqual(asFloat);
      const list = await embed({ model: b.model, input: inputs, encoding_format: 'base64' });
      list.data.forEach((d, i) => {
        expect(typeof d.embedding).toBe('string');
        expect(d.embedding as string).toMatch(/^[A-Za-z0-9+/]+={0,2}$/);
        const decoded = decodeBase64Embedding(d.embedding as string);
        expect(decoded).toHaveLength(b.dims);
        expect(decoded).toEqual((asFloat[i] ?? []).map((x) => Math.fround(x)));
        expect(Math.abs(norm(decoded) - 1)).toBeLessThan(1e-4);
      });
    });

    it('the SDK: asks for base64 by default and decodes it; float and explicit base64 as asked', async () => {
      const reference = floats(await embed({ model: b.model, input: ['sdk one', 'sdk two'] }));
      const decoded = await client.embeddings.create({ model: b.model, input: ['sdk one', 'sdk two'] });
      expect(decoded.object).toBe('list');
      expect(decoded.data.map((d) => d.embedding)).toEqual(reference.map((v) => v.map((x) => Math.fround(x))));
      const asFloat = await client.embeddings.create({ model: b.model, input: 'sdk one', encoding_format: 'float' });
      expect(asFloat.data[0]?.embedding).toEqual(reference[0]);
      const asBase64 = await client.embeddings.create({ model: b.model, input: 'sdk one', encoding_format: 'base64' });
      const b64 = asBase64.data[0]?.embedding as unknown;
      expect(typeof b64).toBe('string');
      expect(decodeBase64Embedding(b64 as string)).toEqual(reference[0]?.map((x) => Math.fround(x)));
      expect(asFloat.usage).toEqual(asBase64.usage);
    });

    it('the SDK with token-id arrays and dimensions', async () => {
      const res = await client.embeddings.create({ model: b.model, input: [[10, 11], [12]], dimensions: 5 });
      expect(res.data.map((d) => d.index)).toEqual([0, 1]);
      for (const d of res.data) {
        expect(d.embedding).toHaveLength(5);
        expect(Math.abs(norm(d.embedding) - 1)).toBeLessThan(1e-4);
      }
    });
  });

  describe('validation', () => {
    const base = { model: 'embed', input: 'x' };
    const notMissing = /^(?!.*Missing required)/;
    const bad = (name: string, patch: Record<string, unknown>, param: string | RegExp, ...message: RegExp[]) => ({
      name,
      body: { ...base, ...patch },
      param,
      message,
    });
    const many = (n: number) => Array.from({ length: n }, (_, i) => `item ${i}`);

    it.each([
      bad('model missing', { model: undefined }, 'model', /Missing required parameter: 'model'/),
      bad('input missing', { input: undefined }, 'input', /Missing required parameter: 'input'/),
      bad('input null', { input: null }, 'input', /'input'/),
      bad('input an empty string', { input: '' }, 'input', /'input'/),
      bad('input an empty array', { input: [] }, 'input', /'input'/),
      bad('input over 2048 strings', { input: many(2049) }, 'input', /'input'/, /2048/),
      bad(
        'input over 2048 token-id arrays',
        { input: Array.from({ length: 2049 }, () => [1]) },
        'input',
        /'input'/,
        /2048/,
      ),
      bad('input mixing strings and numbers', { input: ['a', 1] }, /^input/),
      bad('input an object', { input: { text: 'x' } }, 'input', /'input'/, notMissing),
      bad('input a number', { input: 5 }, 'input', /'input'/, notMissing),
      bad('an empty string in the array', { input: ['a', ''] }, /^input/),
      bad('an empty token-id array in the batch', { input: [[1], []] }, /^input/),
      bad('a negative token id', { input: [1, -1] }, /^input/),
      bad('a fractional token id', { input: [1.5] }, /^input/),
      bad('nested strings', { input: [['a']] }, /^input/),
      bad('encoding_format binary', { encoding_format: 'binary' }, 'encoding_format', /'encoding_format'/),
      bad('encoding_format a number', { encoding_format: 1 }, 'encoding_format', /'encoding_format'/),
      bad('dimensions 0', { dimensions: 0 }, 'dimensions', /'dimensions'/),
      bad('dimensions -1', { dimensions: -1 }, 'dimensions', /'dimensions'/),
      bad('dimensions 1.5', { dimensions: 1.5 }, 'dimensions', /'dimensions'/, notMissing),
      bad('dimensions "8"', { dimensions: '8' }, 'dimensions', /'dimensions'/, notMissing),
      bad('user a number', { user: 5 }, 'user', /'user'/, notMissing),
    ])('400 for $name (param $param)', async ({ body, param, message }) => {
      const res = await raw(stack, body, { key, path: EMBEDDINGS });
      const err = expectOpenAIError(res, 400, {
        type: 'invalid_request_error',
        message,
        ...(typeof param === 'string' && { param }),
      });
      expect(err.param).toMatch(param);
    });

    it('accepts exactly 2048 inputs, and nulls for the optional parameters', async () => {
      const list = await embed({ model: 'embed', input: many(2048), dimensions: 2 });
      expect(list.data).toHaveLength(2048);
      expect(list.data.at(-1)?.index).toBe(2047);
      const nulls = await embed({ model: 'embed', input: 'n', dimensions: null, encoding_format: null, user: null });
      expectUnitVector(nulls.data[0]?.embedding, 256);
    });

    it('the SDK raises BadRequestError naming the field', async () => {
      const err = await rejection(client.embeddings.create({ model: 'embed', input: 'x', dimensions: 0 }));
      expect(err).toBeInstanceOf(BadRequestError);
      expect(err.param).toBe('dimensions');
      const empty = await rejection(client.embeddings.create({ model: 'embed', input: [] }));
      expect(empty).toBeInstanceOf(BadRequestError);
      expect(empty.param).toBe('input');
    });

    it('an invalid request never reaches the upstream', async () => {
      const mark = probe();
      const res = await raw(stack, { model: 'up-embed', input: many(2049), ...mark }, { key, path: EMBEDDINGS });
      expect(res.status).toBe(400);
      await new Promise((r) => setTimeout(r, 200));
      expect(upstream.requests.some((r) => r.body.probe === mark.probe)).toBe(false);
    });
  });

  describe('upstream forwarding and failures', () => {
    it('forwards input, dimensions, encoding_format and user as sent, to /v1/embeddings', async () => {
      const mark = probe();
      const sent = { input: ['x y', 'z'], dimensions: 4, encoding_format: 'base64', user: 'u-1', ...mark };
      const list = await embed({ model: 'up-embed', user_id: 'uid-3', ...sent });
      expect(decodeBase64Embedding(list.data[1]?.embedding as string)).toEqual(fakeEmbedding('z', 4));
      const seen = upstream.requests.find((r) => r.body.probe === mark.probe);
      expect(seen?.path).toBe('/v1/embeddings');
      expect(seen?.body).toEqual({ ...sent, model: 'fake-model' });
    });

    it('drops fields that are neither embedding parameters nor allowed extensions', async () => {
      const mark = probe();
      await embed({
        model: 'up-embed',
        input: 'q',
        access_token: key,
        vllm_private: 1,
        messages: [{ role: 'user', content: 'x' }],
        stream: true,
        top_k: 3,
        ...mark,
      });
      const seen = upstream.requests.find((r) => r.body.probe === mark.probe);
      expect(seen?.body).toMatchObject({ input: 'q', top_k: 3 });
      for (const field of ['access_token', 'vllm_private', 'messages', 'stream', 'stream_options']) {
        expect(seen?.body).not.toHaveProperty(field);
      }
    });

    it('the SDK default (base64) reaches the upstream as base64 and comes back decoded', async () => {
      const mark = probe();
      const res = await client.embeddings.create({
        model: 'up-embed',
        input: 'sdk wire',
        ...(mark as Record<string, unknown>),
      });
      expect(res.data[0]?.embedding).toEqual(fakeEmbedding('sdk wire'));
      const seen = upstream.requests.find((r) => r.body.probe === mark.probe);
      expect(seen?.body.encoding_format).toBe('base64');
    });

    it.each([
      {
        name: 'upstream 400 keeps its message',
        knobs: { fake_fail: 'status:400', fake_error_message: 'input contains a forbidden token' },
        status: [400],
        message: /input contains a forbidden token/,
      },
      {
        name: 'context_length_exceeded names input',
        knobs: { fake_fail: 'context-length' },
        status: [400],
        param: 'input',
        code: 'context_length_exceeded',
        message: /maximum context length/,
      },
      { name: 'upstream 429', knobs: { fake_fail: 'status:429' }, status: [429], message: /rate limit/i },
      {
        name: 'upstream 500',
        knobs: { fake_fail: 'status:500' },
        status: [500, 502],
        type: 'server_error',
        message: /upstream/,
      },
      {
        name: 'garbage body',
        knobs: { fake_fail: 'garbage' },
        status: [500, 502],
        type: 'server_error',
        message: /upstream/,
      },
      {
        name: 'a body without data',
        knobs: { fake_fail: 'no-choices' },
        status: [500, 502],
        type: 'server_error',
        message: /upstream/,
      },
      {
        name: 'a truncated body',
        knobs: { fake_fail: 'eof-after:0' },
        status: [500, 502],
        type: 'server_error',
        message: /upstream/,
      },
      {
        name: 'connection reset',
        knobs: { fake_fail: 'reset-after:0' },
        status: [500, 502],
        type: 'server_error',
        message: /upstream/,
      },
      { name: 'an error object on a 200', knobs: { fake_fail: 'error-frame' }, status: [400], message: /boom/ },
    ])('$name → $status', async ({ knobs, status, type, param, code, message }) => {
      const res = await raw(stack, { model: 'up-embed', input: 'fail', ...knobs }, { key, path: EMBEDDINGS });
      expect(status, res.text).toContain(res.status);
      expectOpenAIError(res, res.status, { type, param, code, message });
      const err = await rejection(client.embeddings.create({ model: 'up-embed', input: 'fail', ...knobs }));
      expect(status).toContain(err.status);
      if (res.status === 429) {
        expect(err).toBeInstanceOf(RateLimitError);
        expect(res.headers.get('retry-after')).toBe('1');
      } else if (res.status >= 500) {
        expect(err).toBeInstanceOf(InternalServerError);
      } else {
        expect(err).toBeInstanceOf(BadRequestError);
      }
    });
  });
});
