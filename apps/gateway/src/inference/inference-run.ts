import {
  ApiError,
  buildUsageRecord,
  type CancelCommand,
  type CompletionJobData,
  NOTHING_PRODUCED,
  OPERATIONS,
  type Produced,
  type RelayMessage,
  type ResponseMeta,
  type UsageOutcome,
  type UsageRecord,
} from '@app/common';
import type { Admitted } from '../limits/limits.service';
import type { RelaySession } from '../relay/relay-session';
import type { Responder } from './responder';
import type { RunDeps } from './run-deps';

/** Extra time past the job deadline before the gateway gives up on the worker reporting it. */
const DEADLINE_GRACE_MS = 2_000;

/** The response header telling how long an admitted request waited for capacity. */
export const QUEUE_MS_HEADER = 'x-aqueduct-queue-ms';

/**
 * One admitted request from enqueue to its last byte, and the rules of its relay in one
 * place: a worker lost before any output is replaced once (retry), a job not yet started
 * is taken back when the client leaves or the deadline passes (withdraw), and a started
 * attempt the gateway gives up on is recorded here unless its worker did (abandon). A job
 * still waiting for capacity at its queue deadline is withdrawn and answered 503
 * `queue_timeout` (the upstream never sees it). Every admitted request leaves exactly one
 * usage record: from its worker, or from here.
 */
export class InferenceRun {
  private session?: RelaySession;
  private responder?: Responder;
  private deadlineTimer?: NodeJS.Timeout;
  private queueTimer?: NodeJS.Timeout;
  /** Epoch ms when a worker first started the request (its wait for capacity ended); null before. */
  private startedAt: number | null = null;
  /** What the relay has brought of the current attempt (earlier attempts' output is dropped). */
  private readonly relayed: Produced = { ...NOTHING_PRODUCED };

  constructor(
    private readonly deps: RunDeps,
    /** The job as enqueued (attempt 0); retries re-enqueue it with the next attempt number. */
    readonly job: CompletionJobData,
    readonly includeUsage: boolean,
    private readonly admitted: Admitted,
    /** The BullMQ priority of its jobs: the token's band and its turn (scheduling/turns.ts). */
    private readonly priority: number,
  ) {}

  get stream(): boolean {
    return this.job.stream;
  }

  /** The admission's rate-limit headers, for the response. */
  get headers(): Record<string, string> {
    return this.admitted.headers;
  }

  /** Milliseconds waited for capacity: until a worker started it, or until now while it waits. */
  get queueMs(): number {
    return Math.max(0, (this.startedAt ?? this.deps.clock.now()) - this.job.meta.startedAt);
  }

  /** Headers known only once the response is written (the responders ask at commit). */
  lateHeaders(): Record<string, string> {
    return { [QUEUE_MS_HEADER]: String(Math.round(this.queueMs)) };
  }

  get responseMeta(): ResponseMeta {
    const { rid, meta, model } = this.job;
    return { id: `${OPERATIONS[this.job.op].idPrefix}${rid}`, created: Math.floor(meta.startedAt / 1000), model };
  }

  /** Opens the relay session before the job exists (no message can precede it), then enqueues. */
  start(responder: Responder): void {
    this.responder = responder;
    const session = this.deps.relay.open(
      this.job.rid,
      this.job.model,
      (msg) => this.onMessage(msg),
      () => this.retryOnce(),
    );
    session.onLost = () => this.abandon(502, 'error');
    session.onVanished = () => void this.onVanished();
    this.session = session;
    const { deadline, queueDeadline, meta } = this.job;
    this.deadlineTimer = setTimeout(() => this.onDeadline(), deadline - meta.startedAt + DEADLINE_GRACE_MS);
    this.queueTimer = setTimeout(() => void this.onQueueTimeout(), queueDeadline - this.deps.clock.now());
    void this.enqueue(0);
  }

  /**
   * The response closed, however it ended: finished, failed, or the client gone at any
   * moment. Everything the request holds is let go here; an unfinished one is withdrawn
   * and its worker told to stop.
   */
  end(finished: boolean): void {
    clearTimeout(this.deadlineTimer);
    clearTimeout(this.queueTimer);
    if (this.startedAt !== null) {
      this.deps.drain.observe(this.job.model, this.deps.clock.now() - this.startedAt);
    }
    this.responder?.close();
    this.deps.relay.close(this.job.rid);
    this.admitted.release();
    if (!finished) {
      void this.withdraw(499, 'client_disconnected', 'later');
      this.cancel('client_disconnected');
    }
  }

  /** The client left while it was being admitted: nothing was queued, nothing is owed. */
  abandonBeforeStart(): void {
    this.admitted.release();
  }

  cancel(reason: CancelCommand['reason']): void {
    this.deps.control.cancel({ rid: this.job.rid, reason });
  }

  private onMessage(msg: RelayMessage): void {
    const relayed = this.relayed;
    if (msg.t === 'start') {
      this.onStarted();
      // A new attempt starts from nothing: its worker's output is all that will be charged.
      Object.assign(relayed, NOTHING_PRODUCED, {
        deployment: msg.deployment === '' ? null : msg.deployment,
        queueMs: this.queueMs,
      });
    } else if (msg.t === 'chunk' || msg.t === 'result') {
      relayed.firstAt ??= this.deps.clock.now();
      OPERATIONS[this.job.op].countOutput(relayed, msg.t === 'chunk' ? msg.choices : (msg.output ?? []));
    } else if (msg.t === 'part') {
      relayed.firstAt ??= this.deps.clock.now();
      relayed.chars += msg.raw.length; // raw JSON: an over-estimate, for a record only a lost worker leaves
    }
    if (msg.t === 'done' || msg.t === 'result' || msg.t === 'error') {
      // Before the last bytes go out: a client that sends its next request the moment it has
      // this answer must find the token's slot free again.
      this.admitted.release();
    }
    this.responder?.onMessage(msg);
  }

  /** The first worker took the job: its wait for capacity is over. */
  private onStarted(): void {
    if (this.startedAt !== null) {
      return;
    }
    this.startedAt = this.deps.clock.now();
    clearTimeout(this.queueTimer);
    this.deps.metrics.observeQueueWait(this.job.model, this.job.priority, this.queueMs / 1000);
  }

  /**
   * Still waiting at the queue deadline: withdrawn, unless a worker takes it at this very
   * moment (the claim decides; then it runs as usual). Retry-After is how long the line
   * ahead would take to drain at the model's capacity.
   */
  private async onQueueTimeout(): Promise<void> {
    if (this.startedAt !== null || !(await this.deps.queue.withdraw(this.job, this.session?.attempt ?? 0))) {
      return;
    }
    const waited = this.queueMs;
    if (this.startedAt === null) {
      // (A worker that lost the claim may have sent its `start` meanwhile: counted there.)
      this.deps.metrics.observeQueueWait(this.job.model, this.job.priority, waited / 1000);
    }
    this.record({ ...NOTHING_PRODUCED, queueMs: waited }, 503, 'timeout');
    this.admitted.release();
    this.responder?.fail(ApiError.queueTimeout(waited, this.deps.drain.retryAfterMs(this.job.model)));
  }

  /** A worker that died before sending output is replaced once, transparently. */
  private retryOnce(): boolean {
    const session = this.session;
    if (session === undefined || session.attempt > 0) {
      return false;
    }
    void this.enqueue(session.nextAttempt());
    return true;
  }

  private onDeadline(): void {
    // Past the worker's own deadline too: a worker that has not reported is stuck or gone.
    void this.withdraw(504, 'timeout', 'abandon');
    this.cancel('timeout');
    this.session?.fail(504, 'The completion did not finish within its timeout.', 'timeout');
  }

  /**
   * Redis lost the attempt's job before any worker took it (RelayService.probeUnheard): the
   * claim is taken so that it can never run after all, then it is run again once, as for a
   * worker lost before any output; a request that already had its retry is answered 503.
   */
  private async onVanished(): Promise<void> {
    const att = this.session?.attempt ?? 0;
    if (!(await this.deps.queue.withdraw(this.job, att)) || this.session?.attempt !== att || this.retryOnce()) {
      return;
    }
    this.record({ ...NOTHING_PRODUCED, queueMs: this.queueMs }, 503, 'error');
    this.admitted.release();
    this.responder?.fail(
      ApiError.server(503, 'The request was lost by the queue (Redis failed over). Please retry.', null, 1_000),
    );
  }

  private async enqueue(att: number): Promise<void> {
    try {
      await this.deps.queue.enqueue({ ...this.job, att }, this.priority);
      this.session?.queued(att, this.deps.clock.now());
    } catch (err) {
      const error = err instanceof ApiError ? err : ApiError.server(503, 'Could not enqueue the request.');
      this.record(NOTHING_PRODUCED, error.status, 'error');
      this.responder?.fail(error);
    }
  }

  /**
   * A job that never reached a worker is recorded here; one that did, by its worker, unless
   * that worker is gone: then by the gateway, now (`abandon`) or after the idle timeout
   * (`later`: the client left, and a live worker writes the exact record once cancelled).
   */
  private async withdraw(status: number, outcome: UsageOutcome, ifStarted: 'abandon' | 'later'): Promise<void> {
    const att = this.session?.attempt ?? 0;
    if (await this.deps.queue.withdraw(this.job, att)) {
      this.record({ ...NOTHING_PRODUCED, queueMs: this.queueMs }, status, outcome);
    } else if (ifStarted === 'abandon') {
      this.abandon(status, outcome);
    } else {
      const record = this.usageOf(this.relayed, status, outcome);
      this.deps.usage.recordAbandonedLater(record, this.job.deadline, this.deps.idleTimeoutMs);
    }
  }

  /** A started attempt the gateway gave up on, logged here unless its worker already did (the usage claim decides). */
  private abandon(status: number, outcome: UsageOutcome): void {
    const record = this.usageOf(this.relayed, status, outcome);
    void this.deps.usage.recordAbandoned(record, this.job.deadline);
  }

  private record(produced: Readonly<Produced>, status: number, outcome: UsageOutcome): void {
    this.deps.usage.record(this.usageOf(produced, status, outcome), this.job.deadline);
  }

  /** Every record this run writes, built the one way workers build theirs. */
  private usageOf(produced: Readonly<Produced>, status: number, outcome: UsageOutcome): UsageRecord {
    return buildUsageRecord(this.job, produced, status, outcome, this.deps.clock.now());
  }
}
