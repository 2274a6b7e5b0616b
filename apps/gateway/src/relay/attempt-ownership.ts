import { completionJobId, type RedisNames } from '@app/common';
import type { RedisClient } from '@app/common';

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
   * issued together, so the command connection's auto-pipelining sends them in one write.
   * Throws when Redis cannot answer (the caller then decides nothing).
   */
  async held(attempts: readonly AttemptRef[]): Promise<boolean[]> {
    const counts = await Promise.all(
      attempts.map((a) => this.redis.exists(this.names.jobLock(a.model, completionJobId(a.rid, a.att)))),
    );
    return counts.map((n) => n > 0);
  }
}
