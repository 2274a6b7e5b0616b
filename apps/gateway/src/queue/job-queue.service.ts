import {
  ApiError,
  AppConfig,
  claimTtlMs,
  COMPLETIONS_QUEUE,
  completionJobId,
  watchBullmq,
  type CompletionJobData,
  type CompletionJobResult,
} from '@app/common';
import { InjectQueue } from '@nestjs/bullmq';
import type Redis from 'ioredis';
import { InjectRedis } from '../redis/redis.tokens';
import { Injectable, Logger } from '@nestjs/common';
import type { Queue } from 'bullmq';

/** The producer side of the completions queue. */
@Injectable()
export class JobQueueService {
  private readonly logger = new Logger(JobQueueService.name);

  constructor(
    @InjectQueue(COMPLETIONS_QUEUE) private readonly queue: Queue<CompletionJobData, CompletionJobResult>,
    @InjectRedis() private readonly redis: Redis,
    private readonly config: AppConfig,
  ) {
    // BullMQ emits 'error' on connection problems (an EventEmitter without a listener would
    // crash); outages are logged once per state change, not on every reconnect attempt.
    watchBullmq(queue, 'queue');
  }

  /**
   * One attempt, no BullMQ retries and no stalled-job replay: a replayed stream would
   * duplicate tokens, so only the gateway decides to retry, and only before the first
   * token. Finished jobs are removed at once so that prompts do not linger in Redis.
   */
  async enqueue(data: CompletionJobData): Promise<void> {
    try {
      await this.queue.add(data.model, data, {
        jobId: completionJobId(data.rid, data.att),
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
  async withdraw(rid: string, att: number, deadline: number): Promise<boolean> {
    try {
      const ttl = claimTtlMs(deadline, Date.now());
      const won = await this.redis.set(this.config.names.claim(rid, att), 'gateway', 'PX', ttl, 'NX');
      if (won === null) {
        return false;
      }
      await this.queue.remove(completionJobId(rid, att)); // best effort: a worker would drop it anyway
      return true;
    } catch {
      return false;
    }
  }
}
