import { describe, expect, it } from 'vitest';
import type { Deployment, EmbeddingObject } from '@app/common';
import type { BackendRequest, BackendResult } from './llm-backend';
import { SimulatorBackend } from './simulator.backend';

type EmbeddingResult = Omit<BackendResult, 'output'> & { output: EmbeddingObject[] };

function deployment(upstreamModel = 'embed', ttftMs = 0): Deployment {
  return {
    id: 'sim#0',
    modelName: 'sim',
    provider: 'simulator',
    upstreamModel,
    ttftMs,
    itlMs: 0,
    extraBodyAllowed: [],
  };
}

function request(params: Record<string, unknown>, over: Partial<BackendRequest> = {}): BackendRequest {
  return {
    op: 'embedding',
    deployment: deployment(),
    params,
    signal: new AbortController().signal,
    deadline: Date.now() + 60_000,
    ...over,
  };
}

const sim = new SimulatorBackend();

function embed(params: Record<string, unknown>, over: Partial<BackendRequest> = {}): Promise<EmbeddingResult> {
  return sim.complete(request(params, over)) as Promise<EmbeddingResult>;
}

function floats(o: EmbeddingObject | undefined): number[] {
  if (o === undefined || typeof o.embedding === 'string') {
    throw new Error('expected a float embedding');
  }
  return o.embedding;
}

const norm = (v: number[]) => Math.sqrt(v.reduce((s, x) => s + x * x, 0));

describe('SimulatorBackend embeddings', () => {
  it('gives each input a 256-dimension unit vector, indexed in input order', async () => {
    const res = await embed({ input: ['the cat', 'a dog', 'the cat'] });
    expect(res.output.map((o) => [o.object, o.index])).toEqual([
      ['embedding', 0],
      ['embedding', 1],
      ['embedding', 2],
    ]);
    for (const o of res.output) {
      expect(floats(o)).toHaveLength(256);
      expect(norm(floats(o))).toBeCloseTo(1, 5);
    }
    // Same input, same vector; different inputs, different vectors.
    expect(floats(res.output[2])).toEqual(floats(res.output[0]));
    expect(floats(res.output[1])).not.toEqual(floats(res.output[0]));
    expect(res.usage).toEqual({ prompt_tokens: 6, completion_tokens: 0, total_tokens: 6 });
  });

  it('is deterministic across requests, and depends on the model', async () => {
    const a = await embed({ input: 'hello' });
    expect(await embed({ input: 'hello' })).toEqual(a);
    const other = await embed({ input: 'hello' }, { deployment: deployment('other-embed') });
    expect(floats(other.output[0])).not.toEqual(floats(a.output[0]));
  });

  it('shortens to `dimensions`, still unit length; more than 256 is a 400', async () => {
    const res = await embed({ input: 'x', dimensions: 8 });
    expect(floats(res.output[0])).toHaveLength(8);
    expect(norm(floats(res.output[0]))).toBeCloseTo(1, 5);
    for (const dimensions of [257, 0, 1.5, '8']) {
      const err: unknown = await embed({ input: 'x', dimensions }).catch((e: unknown) => e);
      expect(err).toMatchObject({ status: 400, type: 'invalid_request_error', param: 'dimensions', failover: false });
    }
  });

  it('base64 is little-endian float32 of exactly the float vector', async () => {
    const float = await embed({ input: ['p', 'q'], dimensions: 16 });
    const b64 = await embed({ input: ['p', 'q'], dimensions: 16, encoding_format: 'base64' });
    for (const [i, o] of b64.output.entries()) {
      expect(typeof o.embedding).toBe('string');
      const bytes = Buffer.from(o.embedding as string, 'base64');
      expect(bytes.length).toBe(16 * 4);
      const decoded = Array.from({ length: 16 }, (_, k) => bytes.readFloatLE(k * 4));
      expect(decoded).toEqual(floats(float.output[i]));
    }
  });

  it('reads token ids as one input (int[]) or a batch (int[][]), each id one token', async () => {
    const one = await embed({ input: [1, 2, 3] });
    expect(one.output).toHaveLength(1);
    expect(one.usage?.prompt_tokens).toBe(3);
    const batch = await embed({ input: [[1, 2, 3], [4]] });
    expect(batch.output).toHaveLength(2);
    expect(floats(batch.output[0])).toEqual(floats(one.output[0]));
    expect(batch.usage).toEqual({ prompt_tokens: 4, completion_tokens: 0, total_tokens: 4 });
  });

  it.each([
    [{}, 'input'],
    [{ input: '' }, 'input'],
    [{ input: [] }, 'input'],
    [{ input: ['a', 1] }, 'input'],
    [{ input: [[1], []] }, 'input'],
    [{ input: Array.from({ length: 2049 }, () => 'w') }, 'input'],
    [{ input: 'x', encoding_format: 'int8' }, 'encoding_format'],
  ])('rejects %j with a 400 naming %s', async (params, param) => {
    const err: unknown = await embed(params).catch((e: unknown) => e);
    expect(err).toMatchObject({ status: 400, type: 'invalid_request_error', param, failover: false });
  });

  it('cannot be streamed', async () => {
    const run = async () => {
      for await (const _ of sim.stream(request({ input: 'x' }))) {
        // nothing is expected
      }
    };
    await expect(run()).rejects.toMatchObject({ status: 400, param: 'stream' });
  });

  it('waits the deployment ttft once, whatever the number of inputs', async () => {
    const state = { now: 0, sleeps: [] as number[] };
    const timed = new SimulatorBackend({
      now: () => state.now,
      sleep: (ms) => {
        state.sleeps.push(ms);
        state.now += ms;
        return Promise.resolve();
      },
    });
    await timed.complete(
      request({ input: ['a', 'b', 'c'] }, { deployment: deployment('embed', 50), deadline: 10_000 }),
    );
    expect(state.sleeps).toEqual([50]);
  });

  it('builds 2048 inputs without holding the event loop, and stops on abort', async () => {
    const input = Array.from({ length: 2048 }, (_, i) => `input number ${i}`);
    let last = performance.now();
    let gap = 0;
    const timer = setInterval(() => {
      const now = performance.now();
      gap = Math.max(gap, now - last);
      last = now;
    }, 2);
    try {
      const res = await embed({ input });
      expect(res.output).toHaveLength(2048);
    } finally {
      clearInterval(timer);
    }
    expect(gap).toBeLessThan(500);

    const ctl = new AbortController();
    const reason = new Error('cancelled');
    const pending = embed({ input }, { signal: ctl.signal });
    ctl.abort(reason);
    await expect(pending).rejects.toBe(reason);
  });
});
