import {
  ApiError,
  AppConfig,
  Clock,
  COMPLETION_JOB_VERSION,
  type CancelCommand,
  type CompletionJobData,
  type ModelEntry,
  type RelayMessage,
  type RequestMeta,
  countOutput,
  estimateCompletionTokens,
  estimatePromptTokens,
  type OutputCount,
  type TokenRecord,
  type UsageOutcome,
  type UsageRecord,
} from '@app/common';
import { Injectable } from '@nestjs/common';
import type { Request, Response } from 'express';
import { ControlService } from '../control/control.service';
import { clientGone, markAdmitted } from '../http/admission-state';
import { type Admitted, LimitsService, RateLimitError } from '../limits/limits.service';
import { ModelCatalog } from '../models/model-catalog.service';
import { CompletionQueue } from '../queue/completion-queue.service';
import { QueueDepth } from '../queue/queue-depth.service';
import { RelayService } from '../relay/relay.service';
import { GatewayUsage } from '../usage/usage.service';
import { WorkerRegistry } from '../workers/worker-registry.service';
import { forModel, parseCompletionRequest, type ParsedCompletion } from './completion-request';
import { JsonResponder } from './json-responder';
import { SseResponder } from './sse-responder';

const MAX_BUFFERED_BYTES = 1024 * 1024;

/** What the relay has brought of the current attempt (earlier attempts' messages are dropped). */
interface Relayed extends OutputCount {
  deployment: string | null;
  firstAt: number | null;
}

/** A request no worker ran (withdrawn, or never enqueued): its record charges nothing. */
const NOTHING_RELAYED: Readonly<Relayed> = { pieces: 0, chars: 0, deployment: null, firstAt: null };

function countRelayed(relayed: Relayed, msg: RelayMessage, now: number): void {
  if (msg.t === 'start') {
    // A new attempt starts from nothing: its worker's output is all that will be charged.
    relayed.pieces = 0;
    relayed.chars = 0;
    relayed.firstAt = null;
    relayed.deployment = msg.deployment === '' ? null : msg.deployment;
  } else if (msg.t === 'chunk' || msg.t === 'part' || msg.t === 'result') {
    relayed.firstAt ??= now;
    countOutput(relayed, msg.choices);
  }
}
/** Extra time past the job deadline before the gateway gives up on the worker reporting it. */
const DEADLINE_GRACE_MS = 2_000;

/**
 * One completion from request to response: validate, resolve the model, admit (workers,
 * queue depth, the token's concurrency slot and rate limits), register the relay session,
 * enqueue, then let a responder turn relay messages into HTTP. A request refused before
 * admission writes no usage record (the HTTP observer counts it); an admitted one gets
 * exactly one, from its worker or, when no worker ran it, from here.
 */
@Injectable()
export class CompletionsService {
  constructor(
    private readonly config: AppConfig,
    private readonly clock: Clock,
    private readonly models: ModelCatalog,
    private readonly relay: RelayService,
    private readonly queue: CompletionQueue,
    private readonly depth: QueueDepth,
    private readonly control: ControlService,
    private readonly workers: WorkerRegistry,
    private readonly limits: LimitsService,
    private readonly usage: GatewayUsage,
  ) {}

  /** Resolves when the response has been fully written (or the client went away). */
  async complete(req: Request, res: Response, token: TokenRecord): Promise<void> {
    const meta: RequestMeta = {
      route: req.path,
      startedAt: this.clock.now(),
      ip: req.ip ?? null,
      userAgent: req.headers['user-agent']?.slice(0, 256) ?? null,
      user: null,
      userId: null,
    };
    const request = parseCompletionRequest(req.body);
    meta.user = typeof request.params.user === 'string' ? request.params.user : null;
    meta.userId = request.userId;
    const model = this.models.resolve(request.model, token);
    request.params = forModel(request, model);
    this.admit();
    let admitted: Admitted;
    try {
      admitted = await this.limits.admit(token, model, req.rid, meta.startedAt);
    } catch (err) {
      if (err instanceof RateLimitError) {
        for (const [name, value] of Object.entries(err.headers)) {
          res.setHeader(name, value);
        }
      }
      throw err;
    }
    if (clientGone(res)) {
      // The client left while it was being admitted: nothing was queued, nothing is owed.
      admitted.release();
      return;
    }
    markAdmitted(res);
    for (const [name, value] of Object.entries(admitted.headers)) {
      res.setHeader(name, value);
    }
    return this.run(res, token, request, model, meta, admitted);
  }

  private run(
    res: Response,
    token: TokenRecord,
    request: ParsedCompletion,
    model: ModelEntry,
    meta: RequestMeta,
    admitted: Admitted,
  ): Promise<void> {
    const rid = res.req.rid;
    const now = meta.startedAt;
    const responseMeta = { id: `cmpl-${rid}`, created: Math.floor(now / 1000), model: model.name };
    const cancel = (reason: CancelCommand['reason']) => this.control.cancel({ rid, reason });
    const responder = request.stream
      ? new SseResponder(res, responseMeta, {
          includeUsage: request.includeUsage,
          commitTimeoutMs: this.config.env.AQUEDUCT_COMMIT_TIMEOUT_MS,
          maxBufferedBytes: MAX_BUFFERED_BYTES,
          onSlowClient: () => cancel('slow_client'),
        })
      : new JsonResponder(res, responseMeta);
    const deadline = now + this.timeoutMs(model);

    // What reached this gateway so far, for the record of an attempt its worker cannot write.
    const relayed: Relayed = { pieces: 0, chars: 0, deployment: null, firstAt: null };
    const recordOf = (counted: Readonly<Relayed>, status: number, outcome: UsageOutcome) =>
      this.usageRecord(rid, meta, token, model.name, request, counted, status, outcome);
    // A started attempt the gateway gave up on (worker lost, deadline passed) is logged here,
    // unless its worker already did: the request's usage claim decides.
    const abandon = (status: number, outcome: UsageOutcome) =>
      void this.usage.recordAbandoned(recordOf(relayed, status, outcome), deadline);
    // A job that never reached a worker is logged here; one that did, by its worker, unless
    // that worker is gone: then by the gateway, now (`abandon`) or after the idle timeout
    // (`later`: the client left, and a live worker writes the exact record once cancelled).
    const withdraw = async (att: number, status: number, outcome: UsageOutcome, ifStarted: 'abandon' | 'later') => {
      if (await this.queue.withdraw(rid, att, deadline)) {
        this.usage.record(recordOf(NOTHING_RELAYED, status, outcome), deadline);
      } else if (ifStarted === 'abandon') {
        abandon(status, outcome);
      } else {
        this.usage.recordAbandonedLater(
          recordOf(relayed, status, outcome),
          deadline,
          this.config.env.AQUEDUCT_IDLE_TIMEOUT_MS,
        );
      }
    };
    const onMessage = (msg: RelayMessage) => {
      countRelayed(relayed, msg, this.clock.now());
      responder.onMessage(msg);
    };

    const job: CompletionJobData = {
      v: COMPLETION_JOB_VERSION,
      rid,
      att: 0,
      replyTo: this.relay.inbox,
      model: model.name,
      stream: request.stream,
      params: request.params,
      deadline,
      tokenId: token.id,
      meta,
    };
    const enqueue = (att: number) =>
      this.queue.enqueue({ ...job, att }).catch((err: unknown) => {
        const error = err instanceof ApiError ? err : ApiError.server(503, 'Could not enqueue the request.');
        this.usage.record(recordOf(NOTHING_RELAYED, error.status, 'error'), deadline);
        responder.fail(error);
      });

    const done = new Promise<void>((resolve) => {
      // A worker that died before sending output is replaced once, transparently.
      const retryOnce = (): boolean => {
        if (session.attempt > 0) {
          return false;
        }
        void enqueue(session.nextAttempt());
        return true;
      };
      const session = this.relay.open(rid, onMessage, retryOnce);
      session.onLost = () => abandon(502, 'error');
      const deadlineTimer = setTimeout(
        () => {
          // Past the worker's own deadline too: a worker that has not reported is stuck or gone.
          void withdraw(session.attempt, 504, 'timeout', 'abandon');
          cancel('timeout');
          session.fail(504, 'The completion did not finish within its timeout.', 'timeout');
        },
        deadline - now + DEADLINE_GRACE_MS,
      );
      // Everything this request holds is let go here, however it ends: finished, failed,
      // or the client gone at any moment (a response that already closed emits nothing).
      res.once('close', () => {
        const finished = responder.finished;
        clearTimeout(deadlineTimer);
        responder.close();
        this.relay.close(rid);
        admitted.release();
        if (!finished) {
          void withdraw(session.attempt, 499, 'client_disconnected', 'later');
          cancel('client_disconnected');
        }
        resolve();
      });
    });

    void enqueue(0);
    return done;
  }

  /** Refuses at once when no worker is alive or the queue is too deep, instead of queueing into the void. */
  private admit(): void {
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

  /**
   * The one place the gateway builds a usage record: from what was relayed (nothing, for a
   * request no worker ran), its usage estimated as a worker's would be.
   */
  private usageRecord(
    rid: string,
    meta: RequestMeta,
    token: TokenRecord,
    model: string,
    request: ParsedCompletion,
    relayed: Readonly<Relayed>,
    status: number,
    outcome: UsageOutcome,
  ): UsageRecord {
    const produced = relayed.chars > 0;
    return {
      rid,
      token_id: token.id,
      model,
      deployment: relayed.deployment,
      route: meta.route,
      status,
      outcome,
      started_at: meta.startedAt,
      latency_ms: this.clock.now() - meta.startedAt,
      ttft_ms: relayed.firstAt === null ? null : relayed.firstAt - meta.startedAt,
      // Without output nothing is charged, as a worker would do.
      prompt_tokens: produced ? estimatePromptTokens(request.params.prompt) : 0,
      completion_tokens: estimateCompletionTokens(relayed, request.stream),
      usage_estimated: produced,
      user: meta.user,
      user_id: meta.userId,
      ip: meta.ip,
      user_agent: meta.userAgent,
    };
  }
}
