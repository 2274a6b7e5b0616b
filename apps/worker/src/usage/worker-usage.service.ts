import { AppConfig, claimTtlMs, Clock, UsageStore, type UsageRecord, type UsageWrite } from '@app/common';
import { Injectable, Logger, Optional } from '@nestjs/common';
import type { RedisClient } from '@app/common';
import { WorkerMetrics } from '../observability/worker-metrics';
import { InjectPublisher } from '../tokens';
import { WorkerIdentity } from '../worker-identity';

/** Records per script call: a batch runs in Redis for well under a millisecond. */
const MAX_BATCH = 64;

interface Pending {
  write: UsageWrite;
  done: (written: boolean | Error) => void;
}

/**
 * Accounts a finished job: the usage record plus the token's rate-limit window, in one
 * script call shared by every job that finished in the same event-loop turn (one script
 * run per record was Redis's third most costly call per request under load). Written by the worker because only it knows the real usage, also for
 * streams that failed or whose client went away. Each job also gets its metrics and one
 * log line (ids, model, deployment, status, timings and token counts; never the prompt or
 * the text).
 */
@Injectable()
export class WorkerUsageService {
  private readonly logger = new Logger(WorkerUsageService.name);
  private readonly store: UsageStore;
  private readonly owner: string;
  private pending: Pending[] = [];

  constructor(
    config: AppConfig,
    private readonly clock: Clock,
    @InjectPublisher() redis: RedisClient,
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
    const claim = { owner: this.owner, ttlMs: claimTtlMs(deadline, this.clock.now()) };
    const written = await new Promise<boolean | Error>((done) => {
      if (this.pending.length === 0) {
        setImmediate(() => this.flush());
      }
      this.pending.push({ write: { record: r, countTowardsLimits: true, claim }, done });
    });
    if (written instanceof Error) {
      this.logger.warn(`usage of ${r.rid} not recorded: ${written.message}`);
    } else if (!written) {
      this.logger.warn({
        msg: `usage of ${r.rid} was already recorded by its gateway; not recorded again`,
        rid: r.rid,
      });
    }
  }

  /** Writes the records of this turn, at most MAX_BATCH per script call. */
  private flush(): void {
    const all = this.pending;
    this.pending = [];
    const now = this.clock.now();
    for (let i = 0; i < all.length; i += MAX_BATCH) {
      const batch = all.slice(i, i + MAX_BATCH);
      this.store
        .recordMany(
          batch.map((p) => p.write),
          now,
        )
        .then(
          (written) => batch.forEach((p, j) => p.done(written[j] === true)),
          (err: Error) => batch.forEach((p) => p.done(err)),
        );
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
