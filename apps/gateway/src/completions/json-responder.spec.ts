import { createHash } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { type ChoiceDelta, RELAY_PART_MAX_BYTES, type RelayMessage, type Usage } from '@app/common';
import express from 'express';
import Redis from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RelayPublisher, type ResultPayload } from '../../../worker/src/completions/relay-publisher';
import { REDIS_URL, uniquePrefix } from '../../../../test/support/stack';
import { RelaySession } from '../relay/relay-session';
import { JsonResponder } from './json-responder';

/**
 * The whole non-stream result path over real Redis pub/sub and real HTTP: the worker's
 * RelayPublisher splits a large result into bounded `part` messages, the gateway's
 * RelaySession checks their sequence and JsonResponder answers with the result rebuilt.
 */

const usage: Usage = { prompt_tokens: 3, completion_tokens: 9, total_tokens: 12 };
const meta = { id: 'cmpl-r', created: 1_700_000_000, model: 'm' };

let pub: Redis;
let sub: Redis;
let server: ReturnType<ReturnType<typeof express>['listen']>;
let base: string;
/** What the next HTTP request answers with: the messages a test published, in arrival order. */
let pending: Promise<RelayMessage[]>;

beforeAll(async () => {
  pub = new Redis(REDIS_URL);
  sub = new Redis(REDIS_URL);
  const app = express();
  app.get('/', (_req, res) => {
    void pending.then((messages) => {
      const responder = new JsonResponder(res, meta);
      const session = new RelaySession('r', (m) => responder.onMessage(m));
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

async function answer(raw: string[]): Promise<{ choices: ChoiceDelta[]; usage: Usage; system_fingerprint?: string }> {
  pending = Promise.resolve(raw.map((m) => JSON.parse(m) as RelayMessage));
  const res = await fetch(base);
  expect(res.status).toBe(200);
  return (await res.json()) as { choices: ChoiceDelta[]; usage: Usage; system_fingerprint?: string };
}

const tricky = (n: number, seed: string) => `${seed} ✓ "q" \\ \t\n 😀 `.repeat(Math.ceil(n / 20)).slice(0, n);

describe('non-stream results over the relay', () => {
  it('a small result is one `result` message, answered as is', async () => {
    const result: ResultPayload = {
      choices: [{ index: 0, text: 'hello', logprobs: null, finish_reason: 'stop' }],
      usage,
      system_fingerprint: 'fp',
    };
    const { raw } = await relay(result);
    expect(raw).toHaveLength(1);
    const body = await answer(raw);
    expect(body.choices).toEqual(result.choices);
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
    const result: ResultPayload = {
      choices: [
        { index: 1, text: tricky(3 * 1024 * 1024 + 7, 'b'), logprobs: null, finish_reason: 'length' },
        { index: 0, text: '', logprobs: null, finish_reason: 'stop' },
        { index: 2, text: tricky(200_000, 'c'), logprobs, finish_reason: 'stop' },
      ],
      usage,
      system_fingerprint: 'fp_big',
    };
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
      createHash('sha256').update(result.choices[0]!.text).digest('hex'),
    );
    expect(body.choices).toEqual(result.choices);
    expect(body.usage).toEqual(usage);
    expect(body.system_fingerprint).toBe('fp_big');
  }, 30_000);

  it('stops sending parts as soon as the job is aborted', async () => {
    const channel = `${uniquePrefix('json-responder')}:inbox`;
    const ctl = new AbortController();
    const out = new RelayPublisher(pub, channel, 'r', 0, () => undefined);
    const sending = out.sendResult(
      { choices: [{ index: 0, text: tricky(8 * 1024 * 1024, 'a'), logprobs: null, finish_reason: 'stop' }], usage },
      ctl.signal,
    );
    setTimeout(() => ctl.abort(new Error('client went away')), 50);
    const started = Date.now();
    await expect(sending).rejects.toThrow('client went away');
    // 8 MiB would take ~450 ms at the paced rate; it stopped at the abort instead.
    expect(Date.now() - started).toBeLessThan(250);
  });
});
