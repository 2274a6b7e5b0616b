import {
  ApiError,
  AppConfig,
  Clock,
  COMPLETION_JOB_VERSION,
  type CancelCommand,
  type CompletionJobData,
  type ModelEntry,
  type RelayMessage,
  type TokenRecord,
} from '@app/common';
import { Injectable } from '@nestjs/common';
import type { Request, Response } from 'express';
import { ControlService } from '../control/control.service';
import { ModelCatalog } from '../models/model-catalog.service';
import { CompletionQueue } from '../queue/completion-queue.service';
import { RelayService } from '../relay/relay.service';
import { WorkerRegistry } from '../workers/worker-registry.service';
import { parseCompletionRequest, type ParsedCompletion } from './completion-request';
import { JsonResponder } from './json-responder';
import { SseResponder } from './sse-responder';

const MAX_BUFFERED_BYTES = 1024 * 1024;
/** Extra time past the job deadline before the gateway gives up on the worker reporting it. */
const DEADLINE_GRACE_MS = 2_000;

/**
 * One completion from request to response: validate, resolve the model, register the
 * relay session, enqueue, then let a responder turn relay messages into HTTP.
 */
@Injectable()
export class CompletionsService {
  constructor(
    private readonly config: AppConfig,
    private readonly clock: Clock,
    private readonly models: ModelCatalog,
    private readonly relay: RelayService,
    private readonly queue: CompletionQueue,
    private readonly control: ControlService,
    private readonly workers: WorkerRegistry,
  ) {}

  /** Resolves when the response has been fully written (or the client went away). */
  async complete(req: Request, res: Response, token: TokenRecord): Promise<void> {
    const request = parseCompletionRequest(req.body);
    const model = this.models.resolve(request.model, token);
    this.admit();

    const rid = req.rid;
    const now = this.clock.now();
    const meta = { id: `cmpl-${rid}`, created: Math.floor(now / 1000), model: model.name };
    const cancel = (reason: CancelCommand['reason']) => this.control.cancel({ rid, reason });
    const responder = request.stream
      ? new SseResponder(res, meta, {
          includeUsage: request.includeUsage,
          commitTimeoutMs: this.config.env.AQUEDUCT_COMMIT_TIMEOUT_MS,
          maxBufferedBytes: MAX_BUFFERED_BYTES,
          onSlowClient: () => cancel('slow_client'),
        })
      : new JsonResponder(res, meta);

    const deadline = now + this.timeoutMs(model);
    const done = new Promise<void>((resolve) => {
      const session = this.relay.open(rid, (msg: RelayMessage) => responder.onMessage(msg));
      const deadlineTimer = setTimeout(
        () => {
          void this.queue.removeIfWaiting(rid, session.attempt);
          cancel('timeout');
          session.fail(504, 'The completion did not finish within its timeout.', 'timeout');
        },
        deadline - now + DEADLINE_GRACE_MS,
      );
      res.on('close', () => {
        clearTimeout(deadlineTimer);
        this.relay.close(rid);
        if (!responder.finished) {
          void this.queue.removeIfWaiting(rid, session.attempt);
          cancel('client_disconnected');
        }
        resolve();
      });
    });

    try {
      await this.queue.enqueue(this.jobData(rid, request, model, deadline, token));
    } catch (err) {
      responder.fail(err instanceof ApiError ? err : ApiError.server(503, 'Could not enqueue the request.'));
    }
    return done;
  }

  /** Refuses at once when no worker is alive instead of queueing into the void. */
  private admit(): void {
    if (this.workers.alive().length === 0) {
      throw ApiError.server(
        503,
        'No worker is available to serve this request right now. Please retry shortly.',
        'no_workers',
        2_000,
      );
    }
  }

  /** A deployment's own timeout wins over the global default; several deployments → the longest. */
  private timeoutMs(model: ModelEntry): number {
    const own = model.deployments.map((d) => d.timeoutMs).filter((t): t is number => t !== undefined);
    return own.length === model.deployments.length
      ? Math.max(...own)
      : Math.max(this.config.env.AQUEDUCT_REQUEST_TIMEOUT_MS, ...own);
  }

  private jobData(
    rid: string,
    request: ParsedCompletion,
    model: ModelEntry,
    deadline: number,
    token: TokenRecord,
  ): CompletionJobData {
    return {
      v: COMPLETION_JOB_VERSION,
      rid,
      att: 0,
      replyTo: this.relay.inbox,
      model: model.name,
      stream: request.stream,
      params: request.params,
      deadline,
      tokenId: token.id,
    };
  }
}
