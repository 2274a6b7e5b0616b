import {
  ApiError,
  AppConfig,
  CancelledError,
  claimTtlMs,
  Clock,
  COMPLETION_JOB_VERSION,
  type CompletionJobData,
  type CompletionJobResult,
  DeadlineError,
  type Deployment,
  FairShare,
  inboxPublisher,
  inboxSubscribers,
  type ModelEntry,
  OPERATIONS,
  type RedisClient,
  RelayLostError,
} from '@app/common';
import { Injectable, Logger } from '@nestjs/common';
import { BackendError } from '../backends/backend.error';
import { BackendRegistry } from '../backends/backend.registry';
import type { BackendRequest } from '../backends/llm-backend';
import { CancellationRegistry } from '../control/cancellation.registry';
import { InjectPublisher } from '../tokens';
import { jobUsageRecord } from '../usage/job-usage';
import { WorkerUsageService } from '../usage/worker-usage.service';
import { WorkerIdentity } from '../worker-identity';
import { DeploymentPicker } from './deployment.picker';
import { jobFailure } from './job-failure';
import { type JobState, newJobState } from './job-state';
import { JobWatchdog } from './job.watchdog';
import { RelayOutbox, type RelaySink } from './relay.outbox';
import { RelayPublisher } from './relay.publisher';

/** Jobs that waited at least this long are checked for a live gateway before they run. */
const ORPHAN_CHECK_AFTER_MS = 1_000;
/**
 * Past its queue deadline a job's live gateway has withdrawn it (the claim decides), so a
 * worker that still wins the claim this long after it has found an orphan.
 */
const ORPHAN_GRACE_MS = 2_000;
/** How far from its queue deadline a job must be to start before its claim is answered. */
const EARLY_START_MARGIN_MS = 1_000;

/**
 * Runs one job of any operation: claims it, tries deployments (failing over to the next
 * one only while nothing has been sent), drives the backend and publishes every chunk to
 * the gateway that owns the request. Never throws: the outcome is the job result, and the
 * client learns about failures through relay `error` messages.
 */
@Injectable()
export class InferenceRunner {
  private readonly logger = new Logger(InferenceRunner.name);
  private readonly fairShare: FairShare;
  /** Unbatched replies: one publish each, on the inbox's transport (see inbox-transport.ts). */
  private readonly direct: RelaySink;

  constructor(
    private readonly config: AppConfig,
    private readonly clock: Clock,
    private readonly identity: WorkerIdentity,
    private readonly cancellations: CancellationRegistry,
    private readonly backends: BackendRegistry,
    private readonly usage: WorkerUsageService,
    private readonly picker: DeploymentPicker,
    private readonly watchdog: JobWatchdog,
    private readonly outbox: RelayOutbox,
    @InjectPublisher() private readonly redis: RedisClient,
  ) {
    this.fairShare = new FairShare(redis, config.names);
    this.direct = { publish: inboxPublisher(redis) };
  }

  /** `queueMs`: how long the job waited in its model's queue (BullMQ's processedOn − timestamp). */
  async run(data: CompletionJobData, queueMs = 0): Promise<CompletionJobResult> {
    const state = newJobState(queueMs);
    const abort = this.cancellations.register(data.rid);
    const sink = data.replyBatched === true ? this.outbox : this.direct;
    const out = new RelayPublisher(sink, data.replyTo, data.rid, data.att, (why) =>
      abort?.abort(new RelayLostError(why)),
    );
    // The claim and `start` are sent without waiting for each other; if the gateway had
    // already withdrawn the job, its session is gone and drops the `start`.
    const claimed = this.claim(data);
    if (data.fair !== undefined) {
      // The model's fair-queueing clock moves to this job's tag (same socket write as the claim).
      this.fairShare.advance(data.model, data.fair).catch(() => undefined);
    }
    const model = this.config.router.resolve(data.model);
    out.send({ t: 'start', workerId: this.identity.id, deployment: model?.deployments[0]?.id ?? '' });
    const early = abort !== undefined && this.startsBeforeClaim(data, queueMs);
    if (!early) {
      if (!(await claimed)) {
        this.cancellations.release(data.rid);
        return { outcome: 'cancelled' }; // the gateway withdrew it and accounted for it
      }
      if (abort === undefined) {
        await this.usage.record(jobUsageRecord(data, state, { outcome: 'cancelled' }, this.clock.now()), data.deadline);
        return { outcome: 'cancelled' };
      }
      if (await this.orphaned(data, queueMs)) {
        this.cancellations.release(data.rid);
        const result: CompletionJobResult = { outcome: 'orphaned', status: 499 };
        await this.usage.record(jobUsageRecord(data, state, result, this.clock.now()), data.deadline);
        return result;
      }
    } else {
      // Lost claim: the gateway withdrew the job (its client left) as the call started.
      void claimed.then((won) => won || abort.abort(new CancelledError('client_disconnected')));
    }
    if (this.usage.beforeLastMessage) {
      out.holdLast();
    }
    const stopWatching = this.watchdog.watch(data, abort, out, state);
    let result: CompletionJobResult;
    try {
      await this.execute(data, this.check(data, model), abort.signal, out, state);
      result = { outcome: 'ok', deployment: state.deployment ?? undefined };
    } catch (err) {
      const failure = jobFailure(abort.signal.aborted ? abort.signal.reason : err, state.deployment ?? undefined);
      if (failure.log !== undefined) {
        this.logger[failure.log.level](failure.log.message);
      }
      if (failure.error !== undefined) {
        const { status, body, retryAfterMs } = failure.error;
        out.send({ t: 'error', status, error: body.error, retryAfterMs });
      }
      result = failure.result;
    } finally {
      stopWatching();
      this.cancellations.release(data.rid);
    }
    if (early && !(await claimed)) {
      return { outcome: 'cancelled' }; // the gateway withdrew it and accounted for it
    }
    // Accounting is issued before awaiting the last publish, so both share a socket write;
    // on a cluster the last message waits for the record instead (see beforeLastMessage).
    const accounted = this.usage.record(jobUsageRecord(data, state, result, this.clock.now()), data.deadline);
    if (this.usage.beforeLastMessage) {
      await accounted;
      out.releaseLast();
    }
    await out.flush();
    await accounted;
    return result;
  }

  /**
   * Whether the upstream call may start while the claim is still in flight, saving the
   * claim's round trip on the path to the first token (measured: a Redis round trip is one
   * of ~14 sequential hops of a request). Only for a job taken at once: the gateway then
   * withdraws a job only because its client left, and the lost claim aborts the call at
   * once. A job that waited, or is near its queue deadline (whose contract is that the
   * upstream never sees a timed-out job), is claimed (and checked for an orphan) first.
   */
  private startsBeforeClaim(data: CompletionJobData, queueMs: number): boolean {
    return queueMs < ORPHAN_CHECK_AFTER_MS && this.clock.now() + EARLY_START_MARGIN_MS < data.queueDeadline;
  }

  /** Takes ownership of the attempt; false when the gateway already withdrew it. */
  private async claim(data: CompletionJobData): Promise<boolean> {
    try {
      const key = this.config.names.claim(data.rid, data.att);
      const ttl = claimTtlMs(data.deadline, this.clock.now());
      return (await this.redis.set(key, this.identity.id, 'PX', ttl, 'NX')) !== null;
    } catch {
      return false; // Redis is down: nothing could be relayed or accounted anyway
    }
  }

  /**
   * Whether a job that waited for capacity lost its gateway meanwhile (killed with requests
   * waiting): then nobody would read the answer, and the upstream must not be called. Its
   * gateway withdraws a job at its queue deadline, so one found waiting past it has none;
   * before that, a job that waited long is checked for a subscriber on its gateway's inbox
   * (one extra round trip, only for jobs that waited, never on the hot path).
   */
  private async orphaned(data: CompletionJobData, queueMs: number): Promise<boolean> {
    if (this.clock.now() > data.queueDeadline + ORPHAN_GRACE_MS) {
      return true;
    }
    if (queueMs < ORPHAN_CHECK_AFTER_MS) {
      return false;
    }
    try {
      return (await inboxSubscribers(this.redis, data.replyTo)) === 0;
    } catch {
      return false; // cannot tell: run it, as before scheduling existed
    }
  }

  private check(data: CompletionJobData, model: ModelEntry | undefined): ModelEntry {
    if (data.v !== COMPLETION_JOB_VERSION || !(data.op in OPERATIONS)) {
      throw ApiError.server(500, `This worker cannot run job version ${String(data.v)}; upgrade the workers.`);
    }
    if (this.clock.now() >= data.deadline) {
      throw new DeadlineError();
    }
    if (model === undefined) {
      throw ApiError.server(500, `The worker has no deployment for model '${data.model}' (router configs differ).`);
    }
    return model;
  }

  private async execute(
    data: CompletionJobData,
    model: ModelEntry,
    signal: AbortSignal,
    out: RelayPublisher,
    state: JobState,
  ): Promise<void> {
    let lastError: unknown;
    let candidates = this.picker.order(model);
    for (;;) {
      // Waits while every deployment is at its max_parallel_requests.
      const d = await this.picker.pick(candidates, data.rid, signal);
      if (d === undefined) {
        throw lastError;
      }
      candidates = candidates.filter((c) => c !== d);
      state.holding = d;
      state.deployment = d.id;
      try {
        await this.attempt(data, this.request(data, d, signal), out, state, signal);
        return;
      } catch (err) {
        const emitted = state.firstAt !== null;
        if (signal.aborted || !(err instanceof BackendError) || !err.failover || emitted) {
          throw err;
        }
        this.logger.warn(`deployment ${d.id} failed before the first token (${err.status}); trying the next one`);
        lastError = err;
      } finally {
        state.holding = undefined;
        await this.picker.release(d, data.rid);
      }
    }
  }

  /** One call to one deployment: a stream relayed chunk by chunk, or one whole result. */
  private async attempt(
    data: CompletionJobData,
    req: BackendRequest,
    out: RelayPublisher,
    state: JobState,
    signal: AbortSignal,
  ): Promise<void> {
    const backend = this.backends.for(req.deployment.provider);
    const op = OPERATIONS[data.op];
    if (!data.stream) {
      const r = await backend.complete(req);
      state.firstAt = this.clock.now();
      state.usage = r.usage;
      op.countOutput(state, r.output);
      // Split into bounded raw `part` messages when large; one `result` message otherwise.
      await out.sendResult(r, signal);
      return;
    }
    for await (const ev of backend.stream(req)) {
      if (ev.type === 'usage') {
        state.usage = ev.usage;
        continue;
      }
      state.firstAt ??= this.clock.now();
      op.countOutput(state, ev.choices);
      out.send({ t: 'chunk', choices: ev.choices, system_fingerprint: ev.system_fingerprint });
      // Only a job out-publishing Redis or the per-job rate waits here (see RelayPublisher).
      const wait = out.backpressure();
      if (wait !== undefined) {
        await wait;
      }
    }
    out.send({ t: 'done', usage: state.usage });
  }

  private request(data: CompletionJobData, d: Deployment, signal: AbortSignal): BackendRequest {
    const deadline =
      d.timeoutMs === undefined ? data.deadline : Math.min(data.deadline, this.clock.now() + d.timeoutMs);
    return { op: data.op, deployment: d, params: data.params, signal, deadline };
  }
}
