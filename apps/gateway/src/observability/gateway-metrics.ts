import { type CancelCommand, ModelQueues, type TokenPriority } from '@app/common';
import { Injectable } from '@nestjs/common';
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import { LimitsService } from '../limits/limits.service';
import { RelayService } from '../relay/relay.service';
import { WorkerRegistryService } from '../workers/worker-registry.service';

/** Seconds; wide enough for long completions. */
const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300];
const TTFT_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30];
/** From "found capacity at once" (most requests, when sized well) to the longest allowed wait. */
const QUEUE_WAIT_BUCKETS = [0.001, 0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
/** Queue states worth a gauge: what waits, what runs, what is scheduled for later. */
const QUEUE_STATES = ['waiting', 'active', 'delayed', 'prioritized'] as const;

export interface RequestLabels {
  route: string;
  method: string;
  model: string;
  status: string;
}

/**
 * The gateway's Prometheus registry (`GET /metrics`). Request counters and histograms are
 * fed by the HTTP observer middleware; queue and worker gauges are read at scrape time,
 * so they cost nothing between scrapes.
 */
@Injectable()
export class GatewayMetrics {
  readonly registry = new Registry();
  private readonly requests: Counter<keyof RequestLabels>;
  private readonly duration: Histogram<keyof RequestLabels>;
  private readonly ttft: Histogram<'route' | 'model'>;
  private readonly cancellations: Counter<'reason'>;
  private readonly queueWait: Histogram<'model' | 'priority'>;

  constructor(queues: ModelQueues, workers: WorkerRegistryService, relay: RelayService, limits: LimitsService) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });
    const labelNames = ['route', 'method', 'model', 'status'] as const;
    this.requests = new Counter({
      name: 'aqueduct_http_requests_total',
      help: 'HTTP requests answered by the gateway, by route, method, model and status (499: client went away).',
      labelNames,
      registers,
    });
    this.duration = new Histogram({
      name: 'aqueduct_http_request_duration_seconds',
      help: 'Time from request arrival until the response ended (a whole stream for stream: true).',
      labelNames,
      buckets: LATENCY_BUCKETS,
      registers,
    });
    this.ttft = new Histogram({
      name: 'aqueduct_time_to_first_token_seconds',
      help: 'Streams: time from request arrival until the first token was written to the client.',
      labelNames: ['route', 'model'],
      buckets: TTFT_BUCKETS,
      registers,
    });
    this.cancellations = new Counter({
      name: 'aqueduct_cancellations_total',
      help: 'Cancels the gateway sent to workers, by reason (client_disconnected, timeout, slow_client).',
      labelNames: ['reason'],
      registers,
    });
    this.queueWait = new Histogram({
      name: 'aqueduct_queue_wait_seconds',
      help: "Time admitted requests waited in their model's queue for capacity, by model and token priority.",
      labelNames: ['model', 'priority'],
      buckets: QUEUE_WAIT_BUCKETS,
      registers,
    });
    // Both queue gauges come from the same counts: the registry collects them concurrently,
    // so one scrape shares one read of every model queue.
    let pending: Promise<{ model: string; counts: Record<string, number> }[]> | undefined;
    const countsByModel = () =>
      (pending ??= Promise.all(
        [...queues.entries()].map(async ([model, queue]) => ({
          model,
          counts: await queue.getJobCounts(...QUEUE_STATES),
        })),
      ).finally(() => (pending = undefined)));
    new Gauge({
      name: 'aqueduct_queue_jobs',
      help: "Jobs in each model's queue by state, read from Redis at scrape time.",
      labelNames: ['model', 'state'],
      registers,
      async collect() {
        try {
          for (const { model, counts } of await countsByModel()) {
            for (const state of QUEUE_STATES) {
              this.set({ model, state }, counts[state] ?? 0);
            }
          }
        } catch {
          this.reset(); // Redis unreachable: no value is better than a stale one
        }
      },
    });
    new Gauge({
      name: 'aqueduct_queue_waiting_requests',
      help: 'Requests waiting for capacity in each model queue (all gateways), read from Redis at scrape time.',
      labelNames: ['model'],
      registers,
      async collect() {
        try {
          for (const { model, counts } of await countsByModel()) {
            this.set({ model }, (counts.waiting ?? 0) + (counts.prioritized ?? 0));
          }
        } catch {
          this.reset();
        }
      },
    });
    new Gauge({
      name: 'aqueduct_workers_alive',
      help: 'Workers this gateway heard a heartbeat from within three heartbeat intervals.',
      registers,
      collect() {
        this.set(workers.alive().length);
      },
    });
    // Both must return to their baseline when clients go away: a leak shows here first.
    new Gauge({
      name: 'aqueduct_relay_sessions',
      help: 'Requests this gateway is relaying right now (open relay sessions).',
      registers,
      collect() {
        this.set(relay.activeCount);
      },
    });
    new Gauge({
      name: 'aqueduct_token_slots_held',
      help: "Concurrency slots (tokens' max_parallel_requests) held by this gateway's open requests.",
      registers,
      collect() {
        this.set(limits.heldCount);
      },
    });
    new Gauge({
      name: 'aqueduct_workers_slots',
      help: 'Job slots of the live workers (from their last heartbeats): busy, and total concurrency.',
      labelNames: ['state'],
      registers,
      collect() {
        const alive = workers.alive();
        this.set(
          { state: 'busy' },
          alive.reduce((n, w) => n + w.active, 0),
        );
        this.set(
          { state: 'total' },
          alive.reduce((n, w) => n + w.concurrency, 0),
        );
      },
    });
  }

  observeRequest(labels: RequestLabels, seconds: number): void {
    this.requests.inc(labels);
    this.duration.observe(labels, seconds);
  }

  observeFirstToken(route: string, model: string, seconds: number): void {
    this.ttft.observe({ route, model }, seconds);
  }

  observeQueueWait(model: string, priority: TokenPriority, seconds: number): void {
    this.queueWait.observe({ model, priority }, seconds);
  }

  countCancel(reason: CancelCommand['reason']): void {
    this.cancellations.inc({ reason });
  }
}
