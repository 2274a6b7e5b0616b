import type { Stack } from './stack';

/** Reads of a stack's Redis state that several suites assert on: queue lengths and usage records. */

/**
 * Jobs of every model queue together: `wait`, those waiting for a worker or for capacity
 * (BullMQ keeps prioritized jobs, which all of ours are, in a ZSET of their own), or
 * `active`, those running.
 */
export async function queueLength(stack: Stack, list: 'wait' | 'active'): Promise<number> {
  const base = `${stack.prefix}:bull:inference-`;
  const count = async (suffix: string, len: (key: string) => Promise<number>) => {
    const keys = await stack.redis.keys(`${base}*:${suffix}`);
    const sizes = await Promise.all(keys.map(len));
    return sizes.reduce((a, b) => a + b, 0);
  };
  if (list === 'active') {
    return count('active', (k) => stack.redis.llen(k));
  }
  const [waiting, prioritized] = await Promise.all([
    count('wait', (k) => stack.redis.llen(k)),
    count('prioritized', (k) => stack.redis.zcard(k)),
  ]);
  return waiting + prioritized;
}

/** Every usage record written so far, parsed, oldest first. */
export async function usageRecords(stack: Stack): Promise<Record<string, unknown>[]> {
  const entries = await stack.redis.xrange(`${stack.prefix}:usage:log`, '-', '+');
  return entries.map(([, f]) => JSON.parse(f[1] ?? '{}') as Record<string, unknown>);
}
