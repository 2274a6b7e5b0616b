import { AppConfig } from '@app/common';
import { Injectable, Logger, type OnApplicationShutdown, type OnModuleInit } from '@nestjs/common';
import type { RedisClient } from '@app/common';
import { InjectRedis } from '../redis/redis.tokens';

const FLUSH_MS = 1_000;
/** Distinct (token, model, status) triples held between flushes; past it, a flush is due now. */
const MAX_PENDING = 10_000;

/**
 * Counts requests refused before admission (400, 401, 403, 404, 413, 415, 429, 503). A
 * refusal stores no record of its own: that would let a loop of bad requests grow Redis
 * without bound (and, with `noeviction`, fill it). Counts are summed in memory and added
 * to one fixed-size HASH once a second, so a flood of refusals costs Redis one pipeline
 * per second per gateway, whatever its rate.
 */
@Injectable()
export class RefusalCounter implements OnModuleInit, OnApplicationShutdown {
  private readonly logger = new Logger(RefusalCounter.name);
  private pending = new Map<string, number>();
  private timer?: NodeJS.Timeout;

  constructor(
    @InjectRedis() private readonly redis: RedisClient,
    private readonly config: AppConfig,
  ) {}

  onModuleInit(): void {
    this.timer = setInterval(() => void this.flush(), FLUSH_MS);
    this.timer.unref();
  }

  async onApplicationShutdown(): Promise<void> {
    clearInterval(this.timer);
    await this.flush();
  }

  /**
   * @param tokenId the authenticated token, or '-' when there is none (401s)
   * @param model the canonical model name, or '' when the request named no known model
   *   (a raw name from the request would make the counter set unbounded)
   */
  count(tokenId: string, model: string, status: number): void {
    const field = `${tokenId}|${model}|${status}`;
    this.pending.set(field, (this.pending.get(field) ?? 0) + 1);
    if (this.pending.size >= MAX_PENDING) {
      void this.flush();
    }
  }

  private async flush(): Promise<void> {
    if (this.pending.size === 0) {
      return;
    }
    const batch = this.pending;
    this.pending = new Map();
    const p = this.redis.pipeline();
    for (const [field, n] of batch) {
      p.hincrby(this.config.names.refusals, field, n);
    }
    try {
      await p.exec();
    } catch (err) {
      // Counts are statistics: losing one second of them while Redis is down is acceptable.
      this.logger.warn(`refusal counts not stored: ${(err as Error).message}`);
    }
  }
}
