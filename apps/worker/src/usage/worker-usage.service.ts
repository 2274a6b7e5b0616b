import { AppConfig, Clock, RateLimiter, UsageStore, type UsageRecord } from '@app/common';
import { Injectable, Logger } from '@nestjs/common';
import type Redis from 'ioredis';
import { InjectPublisher } from '../tokens';

/**
 * Accounts a finished job: the usage record plus the token's rate-limit window, in one
 * MULTI. Written by the worker because only it knows the real usage, also for streams
 * that failed or whose client went away.
 */
@Injectable()
export class WorkerUsage {
  private readonly logger = new Logger(WorkerUsage.name);
  private readonly store: UsageStore;
  private readonly limiter: RateLimiter;

  constructor(
    config: AppConfig,
    private readonly clock: Clock,
    @InjectPublisher() private readonly redis: Redis,
  ) {
    this.store = new UsageStore(redis, config.names, config.env.AQUEDUCT_USAGE_RETENTION_HOURS * 3_600_000);
    this.limiter = new RateLimiter(redis, config.names);
  }

  async record(r: UsageRecord): Promise<void> {
    const now = this.clock.now();
    const multi = this.redis.multi();
    this.store.append(multi, r, now);
    this.limiter.addUsage(multi, r.token_id, now, r.prompt_tokens, r.completion_tokens);
    try {
      await multi.exec();
    } catch (err) {
      this.logger.warn(`usage of ${r.rid} not recorded: ${(err as Error).message}`);
    }
  }
}
