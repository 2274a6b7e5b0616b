import { AppConfig, claimTtlMs, Clock, UsageStore, type UsageRecord } from '@app/common';
import { Injectable, Logger, type OnApplicationShutdown, type OnModuleInit } from '@nestjs/common';
import type { RedisClient } from '@app/common';
import { InjectRedis } from '../redis/redis.tokens';

/**
 * Usage records written by the gateway: requests that ended before any worker ran them
 * (the gateway won the attempt's claim), and started ones whose worker cannot write its own
 * (lost mid-stream, past the deadline), which take the request's usage claim so that a
 * worker finishing later does not write a second record.
 */
@Injectable()
export class UsageService implements OnModuleInit, OnApplicationShutdown {
  readonly store: UsageStore;
  private readonly logger = new Logger(UsageService.name);
  /**
   * Records to write later unless a worker writes its own first, oldest first (they all
   * wait the same time). One list and one timer for all: a flood of disconnects costs no
   * timer per request.
   */
  private readonly deferred: { at: number; record: UsageRecord; deadline: number }[] = [];
  private timer?: NodeJS.Timeout;

  constructor(
    @InjectRedis() redis: RedisClient,
    config: AppConfig,
    private readonly clock: Clock,
  ) {
    this.store = new UsageStore(redis, config.names, config.env.AQUEDUCT_USAGE_RETENTION_HOURS * 3_600_000);
  }

  onModuleInit(): void {
    this.timer = setInterval(() => void this.writeDue(this.clock.now()), 1_000);
    this.timer.unref();
  }

  /** Shutting down: nobody will wait any longer, so whatever is deferred is decided now. */
  onApplicationShutdown(): Promise<void> {
    clearInterval(this.timer);
    return this.writeDue(Number.POSITIVE_INFINITY);
  }

  /**
   * The record of a started attempt whose client left: its worker, when alive, writes the
   * real record once it sees the cancel; one that is already dead never will. After
   * `delayMs` the gateway writes this one, unless the worker did (the usage claim decides).
   */
  recordAbandonedLater(r: UsageRecord, deadline: number, delayMs: number): void {
    this.deferred.push({ at: this.clock.now() + delayMs, record: r, deadline });
  }

  private async writeDue(now: number): Promise<void> {
    const due: Promise<boolean>[] = [];
    while (this.deferred.length > 0 && this.deferred[0]!.at <= now) {
      const { record, deadline } = this.deferred.shift()!;
      due.push(this.recordAbandoned(record, deadline));
    }
    await Promise.all(due);
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
