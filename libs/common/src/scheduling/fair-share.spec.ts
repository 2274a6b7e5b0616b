import Redis from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { deleteByPrefix, REDIS_URL, uniquePrefix } from '../../../../test/support/stack';
import { redisNames } from '../names';
import { FairShare, tagIn } from './fair-share';

/** The fair-queueing tags against a real Redis: rounds across tokens, refunds, the clock, rebases. */
const prefix = uniquePrefix('fair-share');
const names = redisNames(prefix);
const redis = new Redis(REDIS_URL);

afterAll(async () => {
  await deleteByPrefix(redis, prefix);
  redis.disconnect();
});

describe('FairShare', () => {
  it('gives a backlog consecutive tags and a newcomer the next round', async () => {
    const fair = new FairShare(redis, names);
    const model = 'rounds';
    const a: number[] = [];
    for (let i = 1; i <= 5; i++) {
      a.push((await fair.tag(model, 'tok_a', i)).tag);
    }
    expect(a).toEqual([1, 2, 3, 4, 5]);
    // B arrives with nothing in flight: it goes right at the clock, ahead of A's backlog.
    expect((await fair.tag(model, 'tok_b', 1)).tag).toBe(1);
    expect((await fair.tag(model, 'tok_b', 2)).tag).toBe(2);
    // The clock moves as workers take jobs: an idle token starts there, not at 1.
    await fair.advance(model, { tag: 3, epoch: 0 });
    expect((await fair.tag(model, 'tok_c', 1)).tag).toBe(4);
    // A clock never goes back when an older job is taken late.
    await fair.advance(model, { tag: 2, epoch: 0 });
    expect((await fair.tag(model, 'tok_d', 1)).tag).toBe(4);
  });

  it('a request that leaves unserved gives its place back; the lead is capped by the turn', async () => {
    const fair = new FairShare(redis, names);
    const model = 'refunds';
    for (let i = 1; i <= 4; i++) {
      await fair.tag(model, 'tok_a', i);
    }
    await fair.refund(model, 'tok_a');
    await fair.refund(model, 'tok_a');
    expect((await fair.tag(model, 'tok_a', 3)).tag).toBe(3);
    // A lost refund (a dead gateway) cannot push the token back further than it has in flight.
    for (let i = 0; i < 10; i++) {
      await fair.tag(model, 'tok_b', 50);
    }
    expect((await fair.tag(model, 'tok_b', 2)).tag).toBe(2);
  });

  it('rebases the clock, the last tags and the epoch together; old tags translate', async () => {
    const every = 10;
    const fair = new FairShare(redis, names, every);
    const model = 'rebase';
    let last = { tag: 0, epoch: 0, rebased: false };
    for (let i = 1; i <= 12; i++) {
      last = await fair.tag(model, 'tok_a', 100);
    }
    expect(last).toEqual({ tag: 12, epoch: 0, rebased: false });
    await fair.advance(model, { tag: 11, epoch: 0 }); // clock at 11, past the period
    const after = await fair.tag(model, 'tok_a', 100);
    expect(after).toEqual({ tag: 3, epoch: 1, rebased: true }); // last tag 12 → 2, then +1
    expect(tagIn({ tag: 12, epoch: 0 }, 1, every)).toBe(2);
    // A job of the old epoch taken now moves the clock in the new terms (12 → 2), not to 12.
    await fair.advance(model, { tag: 12, epoch: 0 });
    expect((await fair.tag(model, 'tok_new', 1)).tag).toBe(3);
  });
});
