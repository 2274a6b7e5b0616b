import { describe, expect, it } from 'vitest';
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
