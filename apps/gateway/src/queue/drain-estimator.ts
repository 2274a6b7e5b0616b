import { AppConfig, modelCapacity } from '@app/common';
import { Injectable } from '@nestjs/common';
import { QueueDepthService } from './queue-depth.service';

/** Weight of the newest sample in a model's average service time. */
const ALPHA = 0.1;
/** Before any request of a model ended here: assume one second per request. */
const DEFAULT_SERVICE_MS = 1_000;
const MIN_RETRY_MS = 1_000;
const MAX_RETRY_MS = 60_000;

/**
 * The Retry-After of a queue timeout: how long the model's waiting line would take to drain
 * at its capacity, from this gateway's running average of how long its requests hold a
 * deployment slot. Every gateway sees a fair sample of the same model's requests, so the
 * local average stands for all; the line's length is the one all gateways share.
 */
@Injectable()
export class DrainEstimator {
  private readonly serviceMs = new Map<string, number>();

  constructor(
    private readonly config: AppConfig,
    private readonly depth: QueueDepthService,
  ) {}

  /** One request of `model` held a slot for `ms` (from its start to its end). */
  observe(model: string, ms: number): void {
    const avg = this.serviceMs.get(model);
    this.serviceMs.set(model, avg === undefined ? ms : avg + ALPHA * (ms - avg));
  }

  retryAfterMs(model: string): number {
    const entry = this.config.router.resolve(model);
    const capacity = (entry && modelCapacity(entry)) ?? 1;
    const ahead = this.depth.waitingFor(model) + 1;
    const ms = (ahead / capacity) * (this.serviceMs.get(model) ?? DEFAULT_SERVICE_MS);
    return Math.min(MAX_RETRY_MS, Math.max(MIN_RETRY_MS, Math.round(ms)));
  }
}
