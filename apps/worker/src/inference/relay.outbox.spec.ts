import { RELAY_PART_MAX_BYTES } from '@app/common';
import Redis from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REDIS_URL, uniquePrefix } from '../../../../test/support/stack';
import { RelayOutbox } from './relay.outbox';

/** Against the real Redis: what a subscriber receives is what gateways parse. */
describe('RelayOutbox', () => {
  const prefix = uniquePrefix('outbox');
  let publisher: Redis;
  let subscriber: Redis;
  const received = new Map<string, string[]>();

  beforeAll(async () => {
    publisher = new Redis(REDIS_URL);
    subscriber = new Redis(REDIS_URL);
    subscriber.on('message', (channel: string, raw: string) => {
      received.set(channel, [...(received.get(channel) ?? []), raw]);
    });
    await subscriber.subscribe(`${prefix}a`, `${prefix}b`);
  });

  afterAll(async () => {
    await Promise.all([publisher.quit(), subscriber.quit()]);
  });

  const until = async (channel: string, n: number): Promise<string[]> => {
    for (let i = 0; i < 200 && (received.get(channel)?.length ?? 0) < n; i++) {
      await new Promise((r) => setTimeout(r, 10));
    }
    return received.get(channel) ?? [];
  };

  it('sends the messages of one turn for one inbox as one array, in order; a lone message as itself', async () => {
    const outbox = new RelayOutbox(publisher);
    const a = `${prefix}a`;
    const b = `${prefix}b`;
    const sent = [1, 2, 3].map((seq) => outbox.publish(a, JSON.stringify({ rid: 'x', seq })));
    const other = outbox.publish(b, JSON.stringify({ rid: 'y', seq: 0 }));
    // One subscriber received each PUBLISH: every message of a batch learns the same count.
    expect(await Promise.all([...sent, other])).toEqual([1, 1, 1, 1]);
    expect((await until(a, 1)).map((raw) => JSON.parse(raw) as unknown)).toEqual([
      [
        { rid: 'x', seq: 1 },
        { rid: 'x', seq: 2 },
        { rid: 'x', seq: 3 },
      ],
    ]);
    expect(await until(b, 1)).toEqual(['{"rid":"y","seq":0}']);
    // The next turn is a new batch.
    await outbox.publish(b, '{"rid":"y","seq":1}');
    expect(await until(b, 2)).toEqual(['{"rid":"y","seq":0}', '{"rid":"y","seq":1}']);
  });

  it('never makes a message larger than the relay bound: a large message ends the batch before it', async () => {
    const outbox = new RelayOutbox(publisher);
    const a = `${prefix}a`;
    received.delete(a);
    const big = JSON.stringify({ rid: 'z', raw: 'x'.repeat(RELAY_PART_MAX_BYTES - 30) });
    await Promise.all([outbox.publish(a, '{"rid":"z","seq":0}'), outbox.publish(a, big)]);
    const got = await until(a, 2);
    expect(got).toEqual(['{"rid":"z","seq":0}', big]);
    expect(Math.max(...got.map((raw) => raw.length))).toBeLessThanOrEqual(RELAY_PART_MAX_BYTES);
  });

  it('reports 0 receivers when no gateway listens on the inbox any more', async () => {
    const outbox = new RelayOutbox(publisher);
    expect(await outbox.publish(`${prefix}nobody`, '{"rid":"n","seq":0}')).toBe(0);
  });
});
