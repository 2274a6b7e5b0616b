import { ApiError, AppConfig, COMPLETIONS_QUEUE } from '@app/common';
import { InjectQueue } from '@nestjs/bullmq';
import { Injectable, type OnApplicationShutdown, type OnModuleInit } from '@nestjs/common';
import type { Queue } from 'bullmq';

const REFRESH_MS = 500;

/**
 * Admission by queue depth. The waiting count is refreshed twice a second in the
 * background instead of per request, so the check costs nothing on the hot path and
 * may overshoot the limit by at most half a second of arrivals.
 */
@Injectable()
export class QueueDepthService implements OnModuleInit, OnApplicationShutdown {
  private waiting = 0;
  private timer?: NodeJS.Timeout;

  constructor(
    private readonly config: AppConfig,
    @InjectQueue(COMPLETIONS_QUEUE) private readonly queue: Queue,
  ) {}

  onModuleInit(): void {
    this.timer = setInterval(() => {
      this.queue.getWaitingCount().then(
        (n) => (this.waiting = n),
        () => undefined, // Redis down: requests fail at enqueue with 503 anyway
      );
    }, REFRESH_MS);
    this.timer.unref();
  }

  onApplicationShutdown(): void {
    clearInterval(this.timer);
  }

  admit(): void {
    if (this.waiting >= this.config.env.AQUEDUCT_MAX_QUEUE_DEPTH) {
      throw ApiError.server(
        503,
        'The server is overloaded: too many requests are waiting. Please retry shortly.',
        'queue_full',
        2_000,
      );
    }
  }
}
