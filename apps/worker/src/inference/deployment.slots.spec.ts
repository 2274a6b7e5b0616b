import { type Deployment, redisNames } from '@app/common';
import Redis from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { deleteByPrefix, REDIS_URL, uniquePrefix } from '../../../../test/support/stack';
import { DeploymentSlots } from './deployment.slots';

/** max_parallel_requests leases on a real Redis, with a short lease so that expiry is observable. */

const prefix = uniquePrefix('slots');
const names = redisNames(prefix);
const redis = new Redis(REDIS_URL);
const LEASE_MS = 300;
const slots = new DeploymentSlots(redis, names, Date.now, LEASE_MS);
const capped: Deployment = {
  id: 'capped#0',
  modelName: 'capped',
  provider: 'openai',
  upstreamModel: 'm',
  ttftMs: 0,
  itlMs: 0,
  extraBodyAllowed: [],
  maxParallelRequests: 1,
};
const signal = new AbortController().signal;

afterAll(async () => {
  await deleteByPrefix(redis, prefix);
  redis.disconnect();
});

describe('DeploymentSlots', () => {
  it('renews lease and key expiry together, so a request longer than 2 × lease keeps its slot', async () => {
    expect(await slots.pick([capped], 'long', signal)).toBe(capped);
    for (let i = 0; i < 8; i++) {
      await new Promise((r) => setTimeout(r, slots.renewEveryMs));
      expect(await slots.renew(capped, 'long')).toBe(true);
    }
    // 8 × 100 ms = 2.7 × the key's first expiry: without the key's renewal it would be gone.
    const key = names.deploymentSlots(capped.id);
    expect(await redis.zscore(key, 'long')).not.toBeNull();
    expect(await redis.pttl(key)).toBeGreaterThan(LEASE_MS);
    // The cap still holds while the request goes on renewing: a second one waits for the slot.
    const renewing = setInterval(() => void slots.renew(capped, 'long'), slots.renewEveryMs);
    const ctl = new AbortController();
    setTimeout(() => ctl.abort(new Error('gave up')), 3 * LEASE_MS);
    await expect(slots.pick([capped], 'second', ctl.signal)).rejects.toThrow('gave up');
    clearInterval(renewing);
    await slots.release(capped, 'long');
    expect(await slots.pick([capped], 'second', signal)).toBe(capped);
    await slots.release(capped, 'second');
  });

  it('a lease that is not renewed (its worker died) frees the slot within a lease; renew then reports it lost', async () => {
    expect(await slots.pick([capped], 'dead', signal)).toBe(capped);
    const started = Date.now();
    expect(await slots.pick([capped], 'next', signal)).toBe(capped);
    expect(Date.now() - started).toBeLessThan(LEASE_MS + 400);
    expect(await slots.renew(capped, 'dead')).toBe(false);
    await slots.release(capped, 'next');
  });
});
