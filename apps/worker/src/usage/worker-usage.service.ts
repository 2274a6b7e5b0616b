import { AppConfig, claimTtlMs, Clock, sleep, UsageStore, type UsageRecord, type UsageWrite } from '@app/common';
import { type BeforeApplicationShutdown, Injectable, Logger, Optional } from '@nestjs/common';
import type { RedisClient } from '@app/common';
import { WorkerMetrics } from '../observability/worker-metrics';
import { InjectPublisher } from '../tokens';
import { WorkerIdentity } from '../worker-identity';

/** Records per script call: a batch runs in Redis for well under a millisecond. */
const MAX_BATCH = 64;
/**
 * How long a record that Redis refused is tried again. Its client may already have the whole
 * answer, so a write lost now is a completed request without a record: a Redis Cluster
 * promotes a replica within a few seconds of losing a master (measured: about 3 s with a 1 s
 * node timeout), a restarted Redis comes back as quickly.
 */
const RETRY_FOR_MS = 10_000;

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
export class WorkerUsageService implements BeforeApplicationShutdown {
  private readonly logger = new Logger(WorkerUsageService.name);
  private readonly store: UsageStore;
  private readonly owner: string;
  private pending: Pending[] = [];
  /**
   * Whether a job's record is written before its last message goes out (the runner holds it
   * back). On a cluster: there the record goes to its token's shard and the answer to the
   * gateway's, so the client could otherwise have its whole answer before the record exists,
   * and a failover in between would lose a record of a completed request (a master that
   * dies loses what it had not replicated: see UsageStore.accountDurably). It costs each
   * answer's end a round trip; with one Redis both share a socket write instead, and the
   * record is as safe as that Redis.
   */
  readonly beforeLastMessage: boolean;
  /** Set at shutdown: a record Redis refuses then is given up at once (the process is leaving). */
  private closing = false;

  constructor(
    config: AppConfig,
    private readonly clock: Clock,
    @InjectPublisher() redis: RedisClient,
    identity: WorkerIdentity,
    @Optional() private readonly metrics?: WorkerMetrics,
  ) {
    this.owner = identity.id;
    this.beforeLastMessage = config.names.cluster;
    this.store = new UsageStore(redis, config.names, config.env.AQUEDUCT_USAGE_RETENTION_HOURS * 3_600_000);
  }

  /**
   * Takes the request's usage claim in the same script: when the gateway already gave up on
   * this job (it thought the worker lost, or the deadline passed) and wrote the record
   * itself, this one is dropped, so that the request keeps exactly one.
   */
  async record(r: UsageRecord, deadline: number): Promise<void> {
    this.observe(r);
    const giveUpAt = this.clock.now() + RETRY_FOR_MS;
    for (let attempt = 0; ; attempt++) {
      const claim = { owner: this.owner, ttlMs: claimTtlMs(deadline, this.clock.now()) };
      const written = await this.write({ record: r, countTowardsLimits: true, claim });
      if (written === true) {
        return;
      }
      if (written === false) {
        // Also after a retry whose first try did reach Redis: its own claim then stopped a duplicate.
        this.logger.warn({
          msg: `usage of ${r.rid} was already recorded (claim taken); not recorded again`,
          rid: r.rid,
        });
        return;
      }
      if (this.closing || this.clock.now() >= giveUpAt) {
        this.logger.warn(`usage of ${r.rid} not recorded: ${written.message}`);
        return;
      }
      await sleep(Math.min(1_000, 100 * 2 ** attempt));
    }
  }

  beforeApplicationShutdown(): void {
    this.closing = true;
  }

  /** Joins this turn's batch (see flush). */
  private write(write: UsageWrite): Promise<boolean | Error> {
    return new Promise((done) => {
      if (this.pending.length === 0) {
        setImmediate(() => this.flush());
      }
      this.pending.push({ write, done });
    });
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
