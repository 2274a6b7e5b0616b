import { AppConfig, claimTtlMs, Clock, UsageStore, type UsageRecord } from '@app/common';
import { Injectable, Logger, Optional } from '@nestjs/common';
import type Redis from 'ioredis';
import { WorkerMetrics } from '../observability/worker-metrics';
import { InjectPublisher } from '../tokens';
import { WorkerIdentity } from '../worker-identity';

/**
 * Accounts a finished job: the usage record plus the token's rate-limit window, in one
 * script call. Written by the worker because only it knows the real usage, also for
 * streams that failed or whose client went away. Each job also gets its metrics and one
 * log line (ids, model, deployment, status, timings and token counts; never the prompt or
 * the text).
 */
@Injectable()
export class WorkerUsageService {
  private readonly logger = new Logger(WorkerUsageService.name);
  private readonly store: UsageStore;
  private readonly owner: string;

  constructor(
    config: AppConfig,
    private readonly clock: Clock,
    @InjectPublisher() redis: Redis,
    identity: WorkerIdentity,
    @Optional() private readonly metrics?: WorkerMetrics,
  ) {
    this.owner = identity.id;
    this.store = new UsageStore(redis, config.names, config.env.AQUEDUCT_USAGE_RETENTION_HOURS * 3_600_000);
  }

  /**
   * Takes the request's usage claim in the same script: when the gateway already gave up on
   * this job (it thought the worker lost, or the deadline passed) and wrote the record
   * itself, this one is dropped, so that the request keeps exactly one.
   */
  async record(r: UsageRecord, deadline: number): Promise<void> {
    this.observe(r);
    const now = this.clock.now();
    try {
      const written = await this.store.record(r, now, true, { owner: this.owner, ttlMs: claimTtlMs(deadline, now) });
      if (!written) {
        this.logger.warn({
          msg: `usage of ${r.rid} was already recorded by its gateway; not recorded again`,
          rid: r.rid,
        });
      }
    } catch (err) {
      this.logger.warn(`usage of ${r.rid} not recorded: ${(err as Error).message}`);
    }
  }

  private observe(r: UsageRecord): void {
    this.metrics?.observeJob(r);
    const line = {
      msg: 'job finished',
      rid: r.rid,
      token_id: r.token_id,
      model: r.model,
      deployment: r.deployment,
      route: r.route,
      status: r.status,
      outcome: r.outcome,
      latency_ms: r.latency_ms,
      queue_ms: r.queue_ms,
      ttft_ms: r.ttft_ms,
      prompt_tokens: r.prompt_tokens,
      completion_tokens: r.completion_tokens,
      usage_estimated: r.usage_estimated,
    };
    if (r.status >= 500) {
      this.logger.warn(line);
    } else {
      this.logger.log(line);
    }
  }
}
