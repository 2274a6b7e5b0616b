import {
  ApiError,
  AppConfig,
  claimTtlMs,
  completionJobId,
  type CompletionJobData,
  FairShare,
  type FairTag,
  jobPriority,
  type ModelEntry,
  modelCapacity,
  ModelQueues,
  tagIn,
  type TokenRecord,
} from '@app/common';
import type { RedisClient } from '@app/common';
import { InjectRedis } from '../redis/redis.tokens';
import { GATEWAY_CLAIM } from '../relay/attempt-ownership';
import { Injectable, Logger } from '@nestjs/common';

/** Where a request goes in its model's line: its BullMQ priority, and its fair tag if it has one. */
export interface PlaceInLine {
  priority: number;
  fair?: FairTag;
}

/** The producer side of the model queues, and the order of their lines (scheduling/turns.ts). */
@Injectable()
export class JobQueueService {
  private readonly logger = new Logger(JobQueueService.name);
  private readonly fairShare: FairShare;

  constructor(
    private readonly queues: ModelQueues,
    @InjectRedis() private readonly redis: RedisClient,
    private readonly config: AppConfig,
  ) {
    this.fairShare = new FairShare(redis, config.names);
  }

  /**
   * A model with a capacity orders its line by fair tags (one Redis call, only for such
   * models). An unlimited one, whose requests never wait for capacity, only briefly for a
   * worker slot, is served in arrival order within its priority band: ordering it by the
   * turn fixed at admission starved requests admitted at a peak (measured in the soak: one
   * waited 30 s while later ones with lower turns kept passing it).
   */
  async place(model: ModelEntry, token: TokenRecord, turn: number): Promise<PlaceInLine> {
    if (modelCapacity(model) === undefined) {
      return { priority: jobPriority(token.priority, 1) };
    }
    let fair: FairTag & { rebased: boolean };
    try {
      fair = await this.fairShare.tag(model.name, token.id, turn);
    } catch {
      throw ApiError.datastoreUnavailable();
    }
    if (fair.rebased) {
      void this.rebase(model.name, fair.epoch);
    }
    return { priority: jobPriority(token.priority, fair.tag), fair: { tag: fair.tag, epoch: fair.epoch } };
  }

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
   * The model's clock moved back one period (fair-share.ts): the jobs still waiting get their
   * tags in the new epoch's terms, or they would wait behind every newer request. Idempotent
   * (it computes from each job's own tag and epoch), and a job that started meanwhile is skipped.
   */
  private async rebase(model: string, epoch: number): Promise<void> {
    try {
      const waiting = await this.queues.for(model).getPrioritized();
      const behind = waiting.filter((job) => job.data.fair !== undefined && job.data.fair.epoch < epoch);
      await Promise.all(
        behind.map((job) => {
          const priority = jobPriority(job.data.priority, tagIn(job.data.fair ?? { tag: 1, epoch }, epoch));
          return job.changePriority({ priority }).catch(() => undefined);
        }),
      );
      this.logger.log(
        `model ${model}: fair-queueing clock rebased (epoch ${epoch}, ${behind.length} waiting jobs moved)`,
      );
    } catch (err) {
      this.logger.warn(`model ${model}: could not re-prioritise the waiting line: ${(err as Error).message}`);
    }
  }

  /**
   * Withdraws a job that no worker has claimed yet: true when the gateway won the claim
   * (the job will never run, so the gateway accounts for it), false when a worker has it.
   */
  async withdraw(
    job: Pick<CompletionJobData, 'rid' | 'model' | 'deadline' | 'tokenId' | 'fair'>,
    att: number,
  ): Promise<boolean> {
    const { rid, model, deadline } = job;
    try {
      const ttl = claimTtlMs(deadline, Date.now());
      const won = await this.redis.set(this.config.names.claim(rid, att), GATEWAY_CLAIM, 'PX', ttl, 'NX');
      if (won === null) {
        return false;
      }
      // Best effort: a worker would drop it anyway. Removing it at once frees its place in the
      // line (a waiting client that left must not hold up the others), and its token gets
      // the place back for its next request (fair-share.ts).
      await Promise.all([
        this.queues.for(model).remove(completionJobId(rid, att)),
        job.fair === undefined ? undefined : this.fairShare.refund(model, job.tokenId),
      ]);
      return true;
    } catch {
      return false;
    }
  }
}
