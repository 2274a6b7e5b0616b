import { AppConfig, claimTtlMs, Clock, UsageStore, type UsageRecord } from '@app/common';
import { Injectable, Logger } from '@nestjs/common';
import type Redis from 'ioredis';
import { InjectRedis } from '../redis/redis.tokens';

/**
 * Usage records written by the gateway: requests that ended before any worker ran them
 * (the gateway won the attempt's claim), and started ones whose worker cannot write its own
 * (lost mid-stream, past the deadline), which take the request's usage claim so that a
 * worker finishing later does not write a second record.
 */
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

  /**
   * The record of a request no worker ran (the gateway won the attempt's claim). It takes the
   * usage claim too: an earlier attempt's worker that was only thought lost may yet write one.
   */
  record(r: UsageRecord, deadline: number): void {
    const now = this.clock.now();
    this.store
      .record(r, now, false, { owner: 'gateway', ttlMs: claimTtlMs(deadline, now) })
      .catch((err: Error) => this.logger.warn(`usage not recorded: ${err.message}`));
  }

  /**
   * The record of a started attempt the gateway gave up on, unless its worker already wrote
   * one. Its tokens count towards the token's rate limits, as a worker's record would.
   */
  async recordAbandoned(r: UsageRecord, deadline: number): Promise<boolean> {
    const now = this.clock.now();
    try {
      return await this.store.record(r, now, true, { owner: 'gateway', ttlMs: claimTtlMs(deadline, now) });
    } catch (err) {
      this.logger.warn(`usage of ${r.rid} not recorded: ${(err as Error).message}`);
      return false;
    }
  }
}
