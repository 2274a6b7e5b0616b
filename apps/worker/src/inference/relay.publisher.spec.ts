import { describe, expect, it } from 'vitest';
import { RELAY_PART_MAX_BYTES } from '@app/common';
import type { RelaySink } from './relay.outbox';
import { RelayPublisher } from './relay.publisher';

/** A sink that keeps what reaches it, in order, and reports one receiver. */
function recordingSink(): { sink: RelaySink; sent: { t: string; seq: number }[] } {
  const sent: { t: string; seq: number }[] = [];
  return {
    sent,
    sink: {
      publish: (_channel, raw) => {
        const { t, seq } = JSON.parse(raw) as { t: string; seq: number };
        sent.push({ t, seq });
        return Promise.resolve(1);
      },
    },
  };
}

describe('RelayPublisher.holdLast', () => {
  it('keeps back the message that ends a stream until released; everything before it goes at once', () => {
    const { sink, sent } = recordingSink();
    const out = new RelayPublisher(sink, 'inbox', 'r', 0, () => undefined);
    out.holdLast();
    out.send({ t: 'start', workerId: 'w', deployment: 'd' });
    out.send({ t: 'chunk', choices: [] });
    out.send({ t: 'done', usage: null });
    expect(sent).toEqual([
      { t: 'start', seq: 0 },
      { t: 'chunk', seq: 1 },
    ]);
    out.releaseLast();
    expect(sent.at(-1)).toEqual({ t: 'done', seq: 2 });
    // Released: it holds nothing any more.
    out.send({ t: 'hb' });
    expect(sent.at(-1)).toEqual({ t: 'hb', seq: 3 });
  });

  it('keeps back a non-stream result and an error alike, in order', async () => {
    const { sink, sent } = recordingSink();
    const out = new RelayPublisher(sink, 'inbox', 'r', 0, () => undefined);
    out.holdLast();
    await out.sendResult(
      { output: [{ index: 0, text: 'x', logprobs: null, finish_reason: 'stop' }], usage: null },
      new AbortController().signal,
    );
    out.send({ t: 'error', status: 500, error: { message: 'm', type: 'server_error', param: null, code: null } });
    expect(sent).toEqual([]);
    out.releaseLast();
    expect(sent).toEqual([
      { t: 'result', seq: 0 },
      { t: 'error', seq: 1 },
    ]);
  });

  it('holds what is sent after a held message too, so that nothing overtakes it', () => {
    const { sink, sent } = recordingSink();
    const out = new RelayPublisher(sink, 'inbox', 'r', 0, () => undefined);
    out.holdLast();
    out.send({ t: 'start', workerId: 'w', deployment: 'd' });
    out.send({ t: 'done', usage: null });
    out.send({ t: 'hb' }); // a heartbeat tick while the job ends
    expect(sent).toEqual([{ t: 'start', seq: 0 }]);
    out.releaseLast();
    expect(sent).toEqual([
      { t: 'start', seq: 0 },
      { t: 'done', seq: 1 },
      { t: 'hb', seq: 2 },
    ]);
  });

  it('holds nothing unless asked', () => {
    const { sink, sent } = recordingSink();
    const out = new RelayPublisher(sink, 'inbox', 'r', 0, () => undefined);
    out.send({ t: 'done', usage: null });
    expect(sent).toEqual([{ t: 'done', seq: 0 }]);
  });
});

describe('RelayPublisher.sendResult', () => {
  /** Every message published, parsed, in order. */
  function keepingSink(): { sink: RelaySink; messages: Record<string, unknown>[] } {
    const messages: Record<string, unknown>[] = [];
    return {
      messages,
      sink: {
        publish: (_channel, raw) => {
          expect(Buffer.byteLength(raw)).toBeLessThanOrEqual(RELAY_PART_MAX_BYTES);
          messages.push(JSON.parse(raw) as Record<string, unknown>);
          return Promise.resolve(1);
        },
      },
    };
  }
  const unlimited = { bytesPerSecond: 1e12, burstBytes: 1e12, maxUnackedBytes: 1e12 };

  it('sends a large output as bounded parts that join to its exact JSON, and gives the event loop turns meanwhile', async () => {
    const { sink, messages } = keepingSink();
    const out = new RelayPublisher(sink, 'inbox', 'r', 0, () => undefined, Date.now, unlimited);
    // About 3 MB of text full of characters JSON escapes or encodes in several UTF-8 bytes.
    const text = 'q"\\t\n é ✓ 😀 '.repeat(200_000);
    const output = [{ index: 0, text, logprobs: null, finish_reason: 'stop' as const }];
    let turns = 0;
    const ticker = setInterval(() => (turns += 1), 0);
    await out.sendResult({ output, usage: null }, new AbortController().signal);
    clearInterval(ticker);
    const parts = messages.filter((m) => m.t === 'part');
    expect(parts.length).toBeGreaterThan(10);
    expect(parts.map((m) => m.raw as string).join('')).toBe(JSON.stringify(output));
    expect(messages.at(-1)).toMatchObject({ t: 'result', usage: null });
    expect(messages.map((m) => m.seq)).toEqual(messages.map((_, i) => i));
    expect(turns).toBeGreaterThan(1);
  });

  it('sends a small output as one result message', async () => {
    const { sink, messages } = keepingSink();
    const out = new RelayPublisher(sink, 'inbox', 'r', 0, () => undefined);
    const output = [{ index: 0, text: 'hi "there"', logprobs: null, finish_reason: 'stop' as const }];
    await out.sendResult({ output, usage: null }, new AbortController().signal);
    expect(messages).toEqual([{ t: 'result', output, usage: null, rid: 'r', att: 0, seq: 0 }]);
  });
});
