import { ApiError, AppConfig, ModelQueues } from '@app/common';
import { Injectable, type OnApplicationShutdown, type OnModuleInit } from '@nestjs/common';

const REFRESH_MS = 500;

/**
 * Admission by queue depth (all models' waiting requests together) and each model's own
 * waiting count, for the Retry-After of a queue timeout. The counts are refreshed twice a
 * second in the background instead of per request, so the check costs nothing on the hot
 * path and may overshoot the limit by at most half a second of arrivals. An idle gateway
 * (nothing admitted since the last refresh, nothing seen waiting) skips the refresh: it
 * would cost Redis one script per model twice a second forever, and the first request
 * after the pause brings the counts back within one period.
 */
@Injectable()
export class QueueDepthService implements OnModuleInit, OnApplicationShutdown {
  private waiting = 0;
  /** Whether a request was checked since the last refresh. */
  private busy = true;
  private readonly byModel = new Map<string, number>();
  private timer?: NodeJS.Timeout;

  constructor(
    private readonly config: AppConfig,
    private readonly queues: ModelQueues,
  ) {}

  onModuleInit(): void {
    this.timer = setInterval(() => void this.refresh(), REFRESH_MS);
    this.timer.unref();
  }

  /** Requests of a model waiting for capacity, as of the last refresh. */
  waitingFor(model: string): number {
    return this.byModel.get(model) ?? 0;
  }

  private async refresh(): Promise<void> {
    if (!this.busy && this.waiting === 0) {
      return;
    }
    this.busy = false;
    try {
      const counts = await Promise.all(
        [...this.queues.entries()].map(
          async ([model, q]) => [model, await q.getJobCountByTypes('waiting', 'prioritized')] as const,
        ),
      );
      let total = 0;
      for (const [model, n] of counts) {
        this.byModel.set(model, n);
        total += n;
      }
      this.waiting = total;
    } catch {
      // Redis down: requests fail at enqueue with 503 anyway
    }
  }

  onApplicationShutdown(): void {
    clearInterval(this.timer);
  }

  admit(): void {
    this.busy = true;
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
