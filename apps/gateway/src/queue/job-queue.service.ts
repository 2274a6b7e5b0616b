import { ApiError, AppConfig, claimTtlMs, completionJobId, type CompletionJobData, ModelQueues } from '@app/common';
import type Redis from 'ioredis';
import { InjectRedis } from '../redis/redis.tokens';
import { Injectable, Logger } from '@nestjs/common';

/** The producer side of the model queues. */
@Injectable()
export class JobQueueService {
  private readonly logger = new Logger(JobQueueService.name);

  constructor(
    private readonly queues: ModelQueues,
    @InjectRedis() private readonly redis: Redis,
    private readonly config: AppConfig,
  ) {}

  /**
   * Into the model's queue, in the order `priority` gives (see scheduling/turns.ts). One
   * attempt, no BullMQ retries and no stalled-job replay: a replayed stream would
   * duplicate tokens, so only the gateway decides to retry, and only before the first
   * token. Finished jobs are removed at once so that prompts do not linger in Redis.
   */
  async enqueue(data: CompletionJobData, priority: number): Promise<void> {
    try {
      await this.queues.for(data.model).add(data.op, data, {
        jobId: completionJobId(data.rid, data.att),
        priority,
        attempts: 1,
        removeOnComplete: true,
        removeOnFail: true,
      });
    } catch (err) {
      this.logger.warn(`enqueue failed: ${(err as Error).message}`);
      throw ApiError.server(503, 'The gateway cannot reach its queue right now. Please retry shortly.', null, 1_000);
    }
  }

  /**
   * Withdraws a job that no worker has claimed yet: true when the gateway won the claim
   * (the job will never run, so the gateway accounts for it), false when a worker has it.
   */
  async withdraw(job: Pick<CompletionJobData, 'rid' | 'model' | 'deadline'>, att: number): Promise<boolean> {
    const { rid, model, deadline } = job;
    try {
      const ttl = claimTtlMs(deadline, Date.now());
      const won = await this.redis.set(this.config.names.claim(rid, att), 'gateway', 'PX', ttl, 'NX');
      if (won === null) {
        return false;
      }
      // Best effort: a worker would drop it anyway. Removing it at once frees its place in the
      // line (a waiting client that left must not hold up the others).
      await this.queues.for(model).remove(completionJobId(rid, att));
      return true;
    } catch {
      return false;
    }
  }
}
