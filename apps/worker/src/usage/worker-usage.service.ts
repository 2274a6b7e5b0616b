import { AppConfig, Clock, UsageStore, type UsageRecord } from '@app/common';
import { Injectable, Logger } from '@nestjs/common';
import type Redis from 'ioredis';
import { InjectPublisher } from '../tokens';

/**
 * Accounts a finished job: the usage record plus the token's rate-limit window, in one
 * script call. Written by the worker because only it knows the real usage, also for
 * streams that failed or whose client went away.
 */
@Injectable()
export class WorkerUsage {
  private readonly logger = new Logger(WorkerUsage.name);
  private readonly store: UsageStore;

  constructor(
    config: AppConfig,
    private readonly clock: Clock,
    @InjectPublisher() redis: Redis,
  ) {
    this.store = new UsageStore(redis, config.names, config.env.AQUEDUCT_USAGE_RETENTION_HOURS * 3_600_000);
  }

  async record(r: UsageRecord): Promise<void> {
    try {
      await this.store.record(r, this.clock.now(), true);
    } catch (err) {
      this.logger.warn(`usage of ${r.rid} not recorded: ${(err as Error).message}`);
    }
  }
}
