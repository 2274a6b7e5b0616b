import type { Stack } from './stack';

/** Reads of a stack's Redis state that several suites assert on: queue lengths and usage records. */

/** Jobs in one BullMQ list of the completion queue (`wait`: queued, `active`: running). */
export function queueLength(stack: Stack, list: 'wait' | 'active'): Promise<number> {
  return stack.redis.llen(`${stack.prefix}:bull:completions:${list}`);
}

/** Every usage record written so far, parsed, oldest first. */
export async function usageRecords(stack: Stack): Promise<Record<string, unknown>[]> {
  const entries = await stack.redis.xrange(`${stack.prefix}:usage:log`, '-', '+');
  return entries.map(([, f]) => JSON.parse(f[1] ?? '{}') as Record<string, unknown>);
}
