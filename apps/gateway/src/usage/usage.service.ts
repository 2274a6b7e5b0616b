import { AppConfig, Clock, UsageStore, type UsageRecord } from '@app/common';
import { Injectable, Logger } from '@nestjs/common';
import type Redis from 'ioredis';
import { InjectRedis } from '../redis/redis.tokens';

/** Usage records written by the gateway: requests that ended before any worker ran them. */
@Injectable()
export class GatewayUsage {
  readonly store: UsageStore;
  private readonly logger = new Logger(GatewayUsage.name);

  constructor(
    @InjectRedis() redis: Redis,
    config: AppConfig,
    private readonly clock: Clock,
  ) {
    this.store = new UsageStore(redis, config.names, config.env.AQUEDUCT_USAGE_RETENTION_HOURS * 3_600_000);
  }

  record(r: UsageRecord): void {
    this.store
      .record(r, this.clock.now())
      .catch((err: Error) => this.logger.warn(`usage not recorded: ${err.message}`));
  }
}
