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

/**
 * One admitted request from enqueue to its last byte, and the rules of its relay in one
 * place: a worker lost before any output is replaced once (retry), a job not yet started
 * is taken back when the client leaves or the deadline passes (withdraw), and a started
 * attempt the gateway gives up on is recorded here unless its worker did (abandon). Every
 * admitted request leaves exactly one usage record: from its worker, or from here.
 */
export class InferenceRun {
  private session?: RelaySession;
  private responder?: Responder;
  private deadlineTimer?: NodeJS.Timeout;
  /** What the relay has brought of the current attempt (earlier attempts' output is dropped). */
  private readonly relayed: Produced = { ...NOTHING_PRODUCED };

  constructor(
    private readonly deps: RunDeps,
    /** The job as enqueued (attempt 0); retries re-enqueue it with the next attempt number. */
    readonly job: CompletionJobData,
    readonly includeUsage: boolean,
    private readonly admitted: Admitted,
  ) {}

  get stream(): boolean {
    return this.job.stream;
  }

  /** The admission's rate-limit headers, for the response. */
  get headers(): Record<string, string> {
    return this.admitted.headers;
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
      (msg) => this.onMessage(msg),
      () => this.retryOnce(),
    );
    session.onLost = () => this.abandon(502, 'error');
    this.session = session;
    const { deadline, meta } = this.job;
    this.deadlineTimer = setTimeout(() => this.onDeadline(), deadline - meta.startedAt + DEADLINE_GRACE_MS);
    void this.enqueue(0);
  }

  /**
   * The response closed, however it ended: finished, failed, or the client gone at any
   * moment. Everything the request holds is let go here; an unfinished one is withdrawn
   * and its worker told to stop.
   */
  end(finished: boolean): void {
    clearTimeout(this.deadlineTimer);
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
      // A new attempt starts from nothing: its worker's output is all that will be charged.
      Object.assign(relayed, NOTHING_PRODUCED, { deployment: msg.deployment === '' ? null : msg.deployment });
    } else if (msg.t === 'chunk' || msg.t === 'result') {
      relayed.firstAt ??= this.deps.clock.now();
      OPERATIONS[this.job.op].countOutput(relayed, msg.t === 'chunk' ? msg.choices : (msg.output ?? []));
    } else if (msg.t === 'part') {
      relayed.firstAt ??= this.deps.clock.now();
      relayed.chars += msg.raw.length; // raw JSON: an over-estimate, for a record only a lost worker leaves
    }
    this.responder?.onMessage(msg);
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

  private async enqueue(att: number): Promise<void> {
    try {
      await this.deps.queue.enqueue({ ...this.job, att });
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
    if (await this.deps.queue.withdraw(this.job.rid, att, this.job.deadline)) {
      this.record(NOTHING_PRODUCED, status, outcome);
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
