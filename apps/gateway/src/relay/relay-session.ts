import type { ErrorMessage, RelayMessage } from '@app/common';

export type RelayListener = (msg: RelayMessage) => void;

/** How long after its enqueue an attempt that no worker has been heard from is first looked up. */
const FIRST_PROBE_AFTER_MS = 1_000;
/** The longest interval between two looks at an attempt still waiting for capacity. */
const MAX_PROBE_INTERVAL_MS = 8_000;

/**
 * The gateway's end of one request's relay: drops stale attempts and duplicates, turns a
 * gap in `seq` into an error (pub/sub lost a message, so the output would be silently
 * wrong), and tracks activity for the idle timer.
 */
export class RelaySession {
  private att = 0;
  private nextSeq = 0;
  private closed = false;
  /** Epoch ms of the last message; -1 until a worker has started the job. */
  lastActivity = -1;
  /** The worker running the current attempt, from its `start` message. */
  workerId?: string;
  /** Whether output (a chunk, part or result) has reached the client: past that, no retry. */
  hasOutput = false;
  /** Epoch ms at which a terminal message (or a failure) ended the session; -1 while open. */
  closedAt = -1;
  /**
   * Epoch ms at which Redis acknowledged the current attempt's job (-1 before): from then on
   * the job exists, and while no worker has been heard from it is probed now and then
   * (RelayService.probeUnheard) in case it or its messages were lost (a failover).
   */
  queuedAt = -1;
  /** When the next probe of an unheard attempt is due (see {@link probeDue}). */
  private probeAt = -1;
  /**
   * Called when the current attempt's job vanished before any worker took it (Redis lost
   * it in a failover): its owner takes the job back and runs or fails the request.
   */
  onVanished?: () => void;
  /**
   * Called once the gateway failed a started attempt because its worker is lost: that
   * worker will not write the request's usage record, so the owner of the session does.
   */
  onLost?: () => void;

  /**
   * @param onWorkerLost called when the worker of a started attempt disappears; returns
   *   true when it re-enqueued the request (so the session is not failed).
   */
  constructor(
    readonly rid: string,
    /** The canonical model: its queue holds the attempts' jobs (and their locks). */
    readonly model: string,
    private readonly listener: RelayListener,
    readonly onWorkerLost: () => boolean = () => false,
  ) {}

  get attempt(): number {
    return this.att;
  }

  get started(): boolean {
    return this.lastActivity >= 0;
  }

  /** Listen for a new attempt; everything from earlier attempts is dropped from now on. */
  nextAttempt(): number {
    this.att += 1;
    this.nextSeq = 0;
    this.lastActivity = -1;
    this.workerId = undefined;
    this.queuedAt = -1;
    this.probeAt = -1;
    return this.att;
  }

  /** Redis acknowledged attempt `att`'s job at `now`: its first probe is due a while later. */
  queued(att: number, now: number): void {
    if (att === this.att && !this.closed) {
      this.queuedAt = now;
      this.probeAt = now + FIRST_PROBE_AFTER_MS;
    }
  }

  /**
   * Whether an attempt that is queued but unheard of should be looked up now. A job taken
   * at once is heard of within milliseconds, so a first look after a second costs nothing
   * on the hot path; one waiting for capacity is looked at ever less often (every 8 s at
   * most), so that a long line does not cost Redis a command per request per sweep.
   */
  probeDue(now: number): boolean {
    return !this.closed && !this.started && this.queuedAt >= 0 && now >= this.probeAt;
  }

  /** Its job was found where it should be: the next look is due later. */
  probed(now: number): void {
    this.probeAt = now + Math.min(MAX_PROBE_INTERVAL_MS, Math.max(FIRST_PROBE_AFTER_MS, now - this.queuedAt));
  }

  accept(msg: RelayMessage, now: number): void {
    if (this.closed || msg.att !== this.att || msg.seq < this.nextSeq) {
      return;
    }
    this.lastActivity = now;
    if (msg.seq > this.nextSeq) {
      this.fail(502, 'The response stream was interrupted (relay messages were lost). Please retry.', null, now);
      return;
    }
    this.nextSeq += 1;
    if (msg.t === 'start') {
      this.workerId = msg.workerId;
    } else if (msg.t === 'chunk' || msg.t === 'part' || msg.t === 'result') {
      // A part is output too: a re-run would generate (and bill) the answer a second time.
      this.hasOutput = true;
    }
    if (msg.t === 'done' || msg.t === 'error' || msg.t === 'result') {
      this.closed = true;
      this.closedAt = now;
    }
    this.listener(msg);
  }

  /** Ends the session with a synthetic error (timeouts, lost messages, shutdown). */
  fail(status: number, message: string, code: string | null = null, now = Date.now()): void {
    if (this.closed) {
      return;
    }
    this.closed = true;
    this.closedAt = now;
    const msg: ErrorMessage = {
      t: 'error',
      rid: this.rid,
      att: this.att,
      seq: this.nextSeq,
      status,
      error: { message, type: 'server_error', param: null, code },
    };
    this.listener(msg);
  }

  get isClosed(): boolean {
    return this.closed;
  }
}
