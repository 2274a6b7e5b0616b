import { completionJobId, type RedisNames } from '@app/common';
import type { RedisClient } from '@app/common';

/**
 * What Redis knows of an attempt that was enqueued but that no worker has been heard from:
 * - `queued`: its job is there (waiting for capacity, or just taken: its `start` is on its way);
 * - `vanished`: no job and nobody claimed it: Redis lost it before a worker took it (a
 *   failover lost the write that added it), and it will never run;
 * - `ended`: no job, and a worker claimed it: it ran, and none of its messages reached this
 *   gateway (lost in a failover or a slot move);
 * - `withdrawn`: the gateway itself took it back.
 */
export type UnheardAttempt = 'queued' | 'vanished' | 'ended' | 'withdrawn';

/** The value of an attempt's claim when the gateway took it back (JobQueueService.withdraw). */
export const GATEWAY_CLAIM = 'gateway';

export interface AttemptRef {
  rid: string;
  att: number;
  model: string;
}

/**
 * Whether a worker still holds a started attempt, from the attempt's BullMQ job lock: the
 * worker process running the job renews it (every lockDuration/2) for as long as the job
 * is active, and it is gone once the job ended or its worker stopped renewing it. Unlike
 * the heartbeat on the control transport, it cannot be lost in a pub/sub blip and is
 * not withdrawn when a worker starts draining, so it is the proof of ownership the
 * gateway needs before it re-runs or fails a request (either would otherwise duplicate
 * the upstream call or kill a healthy stream).
 */
export class AttemptOwnership {
  constructor(
    private readonly redis: RedisClient,
    private readonly names: RedisNames,
  ) {}

  /**
   * One flag per attempt, in order: true while its job lock exists. The EXISTS calls are
   * issued together, so the command connection sends them in one write (coalesce-writes.ts).
   * Throws when Redis cannot answer (the caller then decides nothing).
   */
  async held(attempts: readonly AttemptRef[]): Promise<boolean[]> {
    const counts = await Promise.all(
      attempts.map((a) => this.redis.exists(this.names.jobLock(a.model, completionJobId(a.rid, a.att)))),
    );
    return counts.map((n) => n > 0);
  }

  /**
   * Looks up unheard attempts (see {@link UnheardAttempt}), one result per attempt, in order:
   * the job's hash and the attempt's claim, issued together (one socket write).
   * On a cluster the two reads may reach their nodes in either order, so a job a worker
   * claimed and finished between them can look `vanished`: harmless, since a vanished job is
   * only taken back by winning its claim (InferenceRun.onVanished), which that worker holds.
   * Throws when Redis cannot answer.
   */
  async unheard(attempts: readonly AttemptRef[]): Promise<UnheardAttempt[]> {
    const looks = attempts.map((a) =>
      Promise.all([
        this.redis.exists(this.names.job(a.model, completionJobId(a.rid, a.att))),
        this.redis.get(this.names.claim(a.rid, a.att)),
      ]),
    );
    return (await Promise.all(looks)).map(([job, claim]) => {
      if (claim === GATEWAY_CLAIM) {
        return 'withdrawn';
      }
      if (job > 0) {
        return 'queued';
      }
      return claim === null ? 'vanished' : 'ended';
    });
  }
}
