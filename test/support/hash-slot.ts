import { createRequire } from 'node:module';

/**
 * The Redis Cluster hash slot of a key (CRC16 of its hash tag, or of the whole key), as
 * ioredis computes it to route a command: its own `cluster-key-slot` dependency.
 */
const calculateSlot = createRequire(__filename)('cluster-key-slot') as (key: string) => number;

export function hashSlot(key: string): number {
  return calculateSlot(key);
}

/** The distinct slots of some keys. */
export function slotsOf(keys: readonly string[]): Set<number> {
  return new Set(keys.map(hashSlot));
}
