import { createHash } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import {
  type ChoiceDelta,
  COMPLETION,
  EMBEDDING,
  type EmbeddingObject,
  type OperationSpec,
  RELAY_PART_MAX_BYTES,
  type RelayMessage,
  type Usage,
} from '@app/common';
import express from 'express';
import Redis from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RelayPublisher, type ResultPayload } from '../../../worker/src/inference/relay.publisher';
import { REDIS_URL, uniquePrefix } from '../../../../test/support/stack';
import { RelaySession } from '../relay/relay-session';
import { JsonResponder } from './json.responder';

/**
 * The whole non-stream result path over real Redis pub/sub and real HTTP: the worker's
 * RelayPublisher splits a large result into bounded raw `part` messages, the gateway's
 * RelaySession checks their sequence and JsonResponder writes them out as the body.
 */

const usage: Usage = { prompt_tokens: 3, completion_tokens: 9, total_tokens: 12 };
const meta = { id: 'cmpl-r', created: 1_700_000_000, model: 'm' };

let pub: Redis;
let sub: Redis;
let server: ReturnType<ReturnType<typeof express>['listen']>;
let base: string;
/** What the next HTTP request answers with: the messages a test published, in arrival order. */
let pending: Promise<RelayMessage[]>;
let operation: OperationSpec = COMPLETION;

beforeAll(async () => {
  pub = new Redis(REDIS_URL);
  sub = new Redis(REDIS_URL);
  const app = express();
  app.get('/', (_req, res) => {
    void pending.then((messages) => {
      const responder = new JsonResponder(res, operation, meta);
      const session = new RelaySession('r', 'm', (m) => responder.onMessage(m));
      messages.forEach((m, i) => session.accept(m, i));
    });
  });
  server = app.listen(0, '127.0.0.1');
  await new Promise((r) => server.once('listening', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  await new Promise((r) => server.close(r));
  pub.disconnect();
  sub.disconnect();
});

/** Publishes `result` on a fresh channel and collects the raw messages until the `result`. */
async function relay(result: ResultPayload): Promise<{ raw: string[]; ms: number }> {
  const channel = `${uniquePrefix('json-responder')}:inbox`;
  const raw: string[] = [];
  const done = new Promise<void>((resolve) => {
    sub.on('message', (ch: string, m: string) => {
      if (ch === channel) {
        raw.push(m);
        if ((JSON.parse(m) as RelayMessage).t === 'result') {
          resolve();
        }
      }
    });
  });
  await sub.subscribe(channel);
  const started = Date.now();
  const out = new RelayPublisher(pub, channel, 'r', 0, (why) => {
    throw new Error(why);
  });
  await out.sendResult(result, new AbortController().signal);
  await out.flush();
  await done;
  await sub.unsubscribe(channel);
  sub.removeAllListeners('message');
  return { raw, ms: Date.now() - started };
}

interface Answer {
  object: string;
  choices: ChoiceDelta[];
  data: EmbeddingObject[];
  usage: Usage;
  system_fingerprint?: string;
}

async function answer(raw: string[], op: OperationSpec = COMPLETION): Promise<Answer> {
  operation = op;
  pending = Promise.resolve(raw.map((m) => JSON.parse(m) as RelayMessage));
  const res = await fetch(base);
  expect(res.status).toBe(200);
  expect(res.headers.get('content-type')).toBe('application/json; charset=utf-8');
  const text = await res.text();
  expect(Number(res.headers.get('content-length'))).toBe(Buffer.byteLength(text));
  return JSON.parse(text) as Answer;
}

const tricky = (n: number, seed: string) => `${seed} ✓ "q" \\ \t\n 😀 `.repeat(Math.ceil(n / 20)).slice(0, n);

describe('non-stream results over the relay', () => {
  it('a small result is one `result` message, answered as is', async () => {
    const result: ResultPayload = {
      output: [{ index: 0, text: 'hello', logprobs: null, finish_reason: 'stop' }],
      usage,
      system_fingerprint: 'fp',
    };
    const { raw } = await relay(result);
    expect(raw).toHaveLength(1);
    const body = await answer(raw);
    expect(body.object).toBe('text_completion');
    expect(body.choices).toEqual(result.output);
    expect(body.usage).toEqual(usage);
    expect(body.system_fingerprint).toBe('fp');
  });

  it('a large result travels as bounded, numbered parts and is rebuilt exactly (text, logprobs, order)', async () => {
    const entries = 30_000;
    const logprobs = {
      tokens: Array.from({ length: entries }, (_, i) => ` tok${i}😀`),
      token_logprobs: Array.from({ length: entries }, (_, i) => (i === 0 ? null : -i / 1e4)),
      top_logprobs: Array.from({ length: entries }, (_, i) =>
        i === 0 ? null : { [` tok${i}😀`]: -i / 1e4, ' x': -9 },
      ),
      text_offset: Array.from({ length: entries }, (_, i) => i * 9),
    };
    const choices: ChoiceDelta[] = [
      { index: 1, text: tricky(3 * 1024 * 1024 + 7, 'b'), logprobs: null, finish_reason: 'length' },
      { index: 0, text: '', logprobs: null, finish_reason: 'stop' },
      { index: 2, text: tricky(200_000, 'c'), logprobs, finish_reason: 'stop' },
    ];
    const result: ResultPayload = { output: choices, usage, system_fingerprint: 'fp_big' };
    const { raw, ms } = await relay(result);

    const parsed = raw.map((m) => JSON.parse(m) as RelayMessage);
    expect(parsed.length).toBeGreaterThan(10);
    expect(parsed.map((m) => m.seq)).toEqual(parsed.map((_, i) => i));
    expect(parsed.slice(0, -1).every((m) => m.t === 'part')).toBe(true);
    expect(parsed.at(-1)?.t).toBe('result');
    for (const m of raw) {
      expect(Buffer.byteLength(m)).toBeLessThanOrEqual(RELAY_PART_MAX_BYTES);
    }
    // Paced: past the 1 MiB burst, at most 16 MiB/s.
    const bytes = raw.reduce((n, m) => n + m.length, 0);
    expect(ms).toBeGreaterThanOrEqual(((bytes - 1024 * 1024) / (16 * 1024 * 1024)) * 1000 - 20);

    const body = await answer(raw);
    expect(body.choices.map((c) => c.index)).toEqual([1, 0, 2]);
    expect(createHash('sha256').update(body.choices[0]!.text).digest('hex')).toBe(
      createHash('sha256').update(choices[0]!.text).digest('hex'),
    );
    expect(body.choices).toEqual(choices);
    expect(body.usage).toEqual(usage);
    expect(body.system_fingerprint).toBe('fp_big');
  }, 30_000);

  it('a large embeddings result is rebuilt exactly in the embeddings envelope', async () => {
    const data: EmbeddingObject[] = Array.from({ length: 400 }, (_, i) => ({
      object: 'embedding',
      index: i,
      embedding: Array.from({ length: 256 }, (_, d) => Math.sin(i * 256 + d) / 16),
    }));
    const { raw } = await relay({
      output: data,
      usage: { prompt_tokens: 800, completion_tokens: 0, total_tokens: 800 },
    });
    expect(raw.length).toBeGreaterThan(4);
    const body = await answer(raw, EMBEDDING);
    expect(body.object).toBe('list');
    expect(body.data).toEqual(data);
    expect(body.usage).toEqual({ prompt_tokens: 800, total_tokens: 800 });
  });

  it('stops sending parts as soon as the job is aborted', async () => {
    const channel = `${uniquePrefix('json-responder')}:inbox`;
    const ctl = new AbortController();
    const out = new RelayPublisher(pub, channel, 'r', 0, () => undefined);
    const sending = out.sendResult(
      { output: [{ index: 0, text: tricky(8 * 1024 * 1024, 'a'), logprobs: null, finish_reason: 'stop' }], usage },
      ctl.signal,
    );
    setTimeout(() => ctl.abort(new Error('client went away')), 50);
    const started = Date.now();
    await expect(sending).rejects.toThrow('client went away');
    // 8 MiB would take ~450 ms at the paced rate; it stopped at the abort instead.
    expect(Date.now() - started).toBeLessThan(250);
  });
});
