import { hashSlot } from '../../libs/common/src/redis/hash-slot';

export { hashSlot };

/** The distinct slots of some keys. */
export function slotsOf(keys: readonly string[]): Set<number> {
  return new Set(keys.map(hashSlot));
}
