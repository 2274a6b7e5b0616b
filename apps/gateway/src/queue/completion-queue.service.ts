import {
  ApiError,
  COMPLETIONS_QUEUE,
  completionJobId,
  type CompletionJobData,
  type CompletionJobResult,
} from '@app/common';
import { InjectQueue } from '@nestjs/bullmq';
import { Injectable, Logger } from '@nestjs/common';
import type { Queue } from 'bullmq';

/** The producer side of the completions queue. */
@Injectable()
export class CompletionQueue {
  private readonly logger = new Logger(CompletionQueue.name);

  constructor(@InjectQueue(COMPLETIONS_QUEUE) private readonly queue: Queue<CompletionJobData, CompletionJobResult>) {
    // BullMQ emits 'error' on connection problems; an EventEmitter without a listener would crash.
    queue.on('error', (err: Error) => this.logger.warn(`queue: ${err.message}`));
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

  /** Removes a job that no worker has taken yet; false when it is active or gone. */
  async removeIfWaiting(rid: string, att: number): Promise<boolean> {
    try {
      return (await this.queue.remove(completionJobId(rid, att))) === 1;
    } catch {
      return false;
    }
  }
}
