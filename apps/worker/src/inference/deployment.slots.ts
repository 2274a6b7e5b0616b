import type { Deployment, RedisNames } from '@app/common';
import type { RedisClient } from '@app/common';

/**
 * `max_parallel_requests` across every worker: each deployment with a cap has a ZSET of
 * leases (member = request id, score = lease expiry). Acquiring is one Lua call, so two
 * workers cannot both take the last slot; a crashed worker's lease simply expires.
 * The key itself expires (2 × lease after the last acquire or renewal) so that an idle
 * deployment leaves nothing behind; renewal therefore extends the key together with the
 * lease, atomically, or a request running longer than that would find its whole ZSET gone
 * and the cap would stop holding for everyone.
 */
const ACQUIRE = `
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('ZADD', KEYS[1], tonumber(ARGV[1]) + tonumber(ARGV[2]), ARGV[4])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
  return 1
end
return 0
`;

/** Extends a lease the caller still holds (and the key's expiry with it); 1 if it held it. */
const RENEW = `
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then
  redis.call('ZADD', KEYS[1], 'XX', tonumber(ARGV[1]) + tonumber(ARGV[2]), ARGV[3])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
  return 1
end
return 0
`;

export const DEFAULT_SLOT_LEASE_MS = 30_000;

type AcquireCommand = (key: string, now: number, leaseMs: number, max: number, member: string) => Promise<number>;
type RenewCommand = (key: string, now: number, leaseMs: number, member: string) => Promise<number>;

export class DeploymentSlots {
  private readonly acquireCmd: AcquireCommand;
  private readonly renewCmd: RenewCommand;

  constructor(
    private readonly redis: RedisClient,
    private readonly names: RedisNames,
    private readonly now: () => number = Date.now,
    private readonly leaseMs: number = DEFAULT_SLOT_LEASE_MS,
  ) {
    redis.defineCommand('aqueductAcquireSlot', { numberOfKeys: 1, lua: ACQUIRE });
    redis.defineCommand('aqueductRenewSlot', { numberOfKeys: 1, lua: RENEW });
    const commands = redis as unknown as { aqueductAcquireSlot: AcquireCommand; aqueductRenewSlot: RenewCommand };
    this.acquireCmd = commands.aqueductAcquireSlot.bind(redis);
    this.renewCmd = commands.aqueductRenewSlot.bind(redis);
  }

  /**
   * How often a running request must renew: three chances per lease, so one slow or lost
   * renewal (a Redis blip) does not cost the slot.
   */
  get renewEveryMs(): number {
    return Math.max(50, Math.floor(this.leaseMs / 3));
  }

  /**
   * The first deployment (in preference order) with a free slot, waiting with backoff
   * while all are full. Undefined when there are no candidates. Throws when `signal`
   * aborts (cancel, deadline, shutdown).
   */
  async pick(candidates: readonly Deployment[], rid: string, signal: AbortSignal): Promise<Deployment | undefined> {
    let delay = 10;
    while (candidates.length > 0) {
      for (const d of candidates) {
        if (d.maxParallelRequests === undefined) {
          return d;
        }
        if ((await this.acquireCmd(this.key(d), this.now(), this.leaseMs, d.maxParallelRequests, rid)) === 1) {
          return d;
        }
      }
      await sleep(delay * (0.5 + Math.random()), signal);
      delay = Math.min(delay * 2, 200);
    }
    return undefined;
  }

  /**
   * Extends a long request's lease (called from the job's timer every {@link renewEveryMs}).
   * False when the lease was already gone (expired during a Redis outage): the request runs
   * on, uncounted, rather than being killed for a bookkeeping failure.
   */
  async renew(d: Deployment, rid: string): Promise<boolean> {
    if (d.maxParallelRequests === undefined) {
      return true;
    }
    return (await this.renewCmd(this.key(d), this.now(), this.leaseMs, rid)) === 1;
  }

  async release(d: Deployment, rid: string): Promise<void> {
    if (d.maxParallelRequests !== undefined) {
      await this.redis.zrem(this.key(d), rid);
    }
  }

  private key(d: Deployment): string {
    return this.names.deploymentSlots(d.id);
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal.aborted) {
      reject(signal.reason as Error);
      return;
    }
    const timer = setTimeout(() => {
      signal.removeEventListener('abort', onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal.reason as Error);
    };
    signal.addEventListener('abort', onAbort, { once: true });
  });
}
