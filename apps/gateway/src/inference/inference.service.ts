import {
  ApiError,
  AppConfig,
  Clock,
  COMPLETION_JOB_VERSION,
  type CompletionJobData,
  jobParams,
  type ModelEntry,
  type OperationSpec,
  type RequestMeta,
  type TokenRecord,
} from '@app/common';
import { Injectable } from '@nestjs/common';
import { ControlService } from '../control/control.service';
import { LimitsService } from '../limits/limits.service';
import { ModelCatalogService } from '../models/model-catalog.service';
import { GatewayMetrics } from '../observability/gateway-metrics';
import { DrainEstimator } from '../queue/drain-estimator';
import { JobQueueService, type PlaceInLine } from '../queue/job-queue.service';
import { QueueDepthService } from '../queue/queue-depth.service';
import { RelayService } from '../relay/relay.service';
import { UsageService } from '../usage/usage.service';
import { WorkerRegistryService } from '../workers/worker-registry.service';
import { InferenceRun } from './inference-run';
import type { RunDeps } from './run-deps';

/** Who asked, as the controller read it off the HTTP request. */
export interface ClientInfo {
  rid: string;
  route: string;
  ip: string | null;
  userAgent: string | null;
}

/**
 * Admits one request of any operation: validates it with the operation's schema, resolves
 * its model once (existence, allow-list, the model's `mode`), checks the gateway can serve
 * it (draining, Redis, live workers, queue depth) and takes the token's concurrency slot
 * and rate limits. Knows nothing of HTTP: it returns the run the controller starts. A
 * request refused here writes no usage record (the HTTP observer counts it).
 */
@Injectable()
export class InferenceService {
  private readonly deps: RunDeps;

  constructor(
    private readonly config: AppConfig,
    private readonly clock: Clock,
    private readonly models: ModelCatalogService,
    private readonly relay: RelayService,
    private readonly depth: QueueDepthService,
    private readonly workers: WorkerRegistryService,
    private readonly limits: LimitsService,
    private readonly queue: JobQueueService,
    control: ControlService,
    usage: UsageService,
    metrics: GatewayMetrics,
    drain: DrainEstimator,
  ) {
    const idleTimeoutMs = config.env.AQUEDUCT_IDLE_TIMEOUT_MS;
    this.deps = { clock, relay, queue, control, usage, metrics, drain, idleTimeoutMs };
  }

  /**
   * Throws the ApiError to answer with when the request is refused. `onModel` learns the
   * canonical model as soon as it is known (the metrics label it, refused or not).
   */
  async admit(
    op: OperationSpec,
    body: unknown,
    token: TokenRecord,
    client: ClientInfo,
    onModel: (name: string) => void,
  ): Promise<InferenceRun> {
    const startedAt = this.clock.now();
    const request = op.parse(body);
    const model = this.models.lookup(request.model);
    onModel(model.name);
    this.models.authorize(model, token, op);
    const params = jobParams(op, request, model);
    this.checkCapacity();
    const admitted = await this.limits.admit(token, model, client.rid, startedAt);
    let place: PlaceInLine;
    try {
      place = await this.queue.place(model, token, admitted.turn);
    } catch (err) {
      admitted.release();
      throw err;
    }
    const meta: RequestMeta = {
      route: client.route,
      startedAt,
      ip: client.ip,
      userAgent: client.userAgent,
      user: request.user,
      userId: request.userId,
    };
    const deadline = startedAt + this.timeoutMs(model);
    const job: CompletionJobData = {
      v: COMPLETION_JOB_VERSION,
      rid: client.rid,
      op: op.name,
      att: 0,
      replyTo: this.relay.inbox,
      replyBatched: true,
      model: model.name,
      stream: request.stream,
      params,
      deadline,
      queueDeadline: Math.min(deadline, startedAt + this.config.env.AQUEDUCT_MAX_QUEUE_WAIT_MS),
      tokenId: token.id,
      priority: token.priority,
      ...(place.fair !== undefined && { fair: place.fair }),
      meta,
    };
    return new InferenceRun(this.deps, job, request.includeUsage, admitted, place.priority);
  }

  /** Refuses at once when no worker is alive or the queue is too deep, instead of queueing into the void. */
  private checkCapacity(): void {
    if (this.relay.draining) {
      throw ApiError.server(503, 'The gateway is shutting down. Please retry.', 'gateway_shutdown', 1_000);
    }
    if (!this.relay.listening) {
      // Booted without Redis (or it is gone): no worker's reply could reach this gateway.
      throw ApiError.server(
        503,
        'The gateway cannot reach Redis right now. Please retry shortly.',
        'redis_unavailable',
        1_000,
      );
    }
    if (this.workers.alive().length === 0) {
      throw ApiError.server(
        503,
        'No worker is available to serve this request right now. Please retry shortly.',
        'no_workers',
        2_000,
      );
    }
    this.depth.admit();
  }

  /** A deployment's own timeout wins over the global default; several deployments → the longest. */
  private timeoutMs(model: ModelEntry): number {
    const own = model.deployments.map((d) => d.timeoutMs).filter((t): t is number => t !== undefined);
    return own.length === model.deployments.length
      ? Math.max(...own)
      : Math.max(this.config.env.AQUEDUCT_REQUEST_TIMEOUT_MS, ...own);
  }
}
