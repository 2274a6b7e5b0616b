import { AppConfig, type UsageRecord } from '@app/common';
import { Injectable } from '@nestjs/common';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import { CancellationRegistry } from '../control/cancellation.registry';
import { WorkerIdentity } from '../worker-identity';

const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];
const TTFT_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30];

/**
 * The worker's Prometheus registry, served on WORKER_METRICS_PORT. Per-job series are fed
 * from the job's usage record (one per job, also for failed and cancelled ones); upstream
 * errors from every failed backend call, failovers included.
 */
@Injectable()
export class WorkerMetrics {
  readonly registry = new Registry();
  private readonly jobs: Counter<'model' | 'deployment' | 'outcome' | 'status'>;
  private readonly latency: Histogram<'model' | 'deployment' | 'outcome'>;
  private readonly ttft: Histogram<'model' | 'deployment'>;
  private readonly tokens: Counter<'model' | 'deployment' | 'kind'>;
  private readonly upstreamErrors: Counter<'model' | 'deployment' | 'status'>;
  private readonly cancellations: Counter<'model'>;

  constructor(config: AppConfig, identity: WorkerIdentity, running: CancellationRegistry) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });
    this.jobs = new Counter({
      name: 'aqueduct_worker_jobs_total',
      help: 'Jobs this worker finished, by model, deployment, outcome (ok, error, client_disconnected, timeout) and status.',
      labelNames: ['model', 'deployment', 'outcome', 'status'],
      registers,
    });
    this.latency = new Histogram({
      name: 'aqueduct_worker_request_duration_seconds',
      help: "From the request's arrival at the gateway until its job ended (queue time included).",
      labelNames: ['model', 'deployment', 'outcome'],
      buckets: LATENCY_BUCKETS,
      registers,
    });
    this.ttft = new Histogram({
      name: 'aqueduct_worker_time_to_first_token_seconds',
      help: "From the request's arrival at the gateway until the backend's first token (queue time included).",
      labelNames: ['model', 'deployment'],
      buckets: TTFT_BUCKETS,
      registers,
    });
    this.tokens = new Counter({
      name: 'aqueduct_worker_tokens_total',
      help: 'Tokens in (kind="prompt") and out (kind="completion"), as the backend reported them or as estimated.',
      labelNames: ['model', 'deployment', 'kind'],
      registers,
    });
    this.upstreamErrors = new Counter({
      name: 'aqueduct_worker_upstream_errors_total',
      help: 'Failed backend calls by deployment and status, failovers included (cancellations are not errors).',
      labelNames: ['model', 'deployment', 'status'],
      registers,
    });
    this.cancellations = new Counter({
      name: 'aqueduct_worker_cancellations_total',
      help: 'Jobs that ended because their request was cancelled (client went away, gateway gone) or dropped at pickup.',
      labelNames: ['model'],
      registers,
    });
    new Gauge({
      name: 'aqueduct_worker_active_jobs',
      help: 'Jobs this worker is running now.',
      registers,
      collect() {
        this.set(running.activeCount);
      },
    });
    new Gauge({
      name: 'aqueduct_worker_concurrency',
      help: 'Jobs this worker runs at most at once (WORKER_CONCURRENCY).',
      registers,
    }).set(config.env.WORKER_CONCURRENCY);
    new Gauge({
      name: 'aqueduct_worker_info',
      help: 'Always 1; labels identify the worker process (its id appears in the gateway logs and heartbeats).',
      labelNames: ['worker_id'],
      registers,
    }).set({ worker_id: identity.id }, 1);
  }

  /** One finished job, from its usage record. */
  observeJob(r: UsageRecord): void {
    const model = r.model;
    const deployment = r.deployment ?? '';
    this.jobs.inc({ model, deployment, outcome: r.outcome, status: String(r.status) });
    this.latency.observe({ model, deployment, outcome: r.outcome }, r.latency_ms / 1000);
    if (r.ttft_ms !== null) {
      this.ttft.observe({ model, deployment }, r.ttft_ms / 1000);
    }
    this.tokens.inc({ model, deployment, kind: 'prompt' }, r.prompt_tokens);
    this.tokens.inc({ model, deployment, kind: 'completion' }, r.completion_tokens);
    if (r.outcome === 'client_disconnected') {
      this.cancellations.inc({ model });
    }
  }

  countUpstreamError(model: string, deployment: string, status: number): void {
    this.upstreamErrors.inc({ model, deployment, status: String(status) });
  }
}
