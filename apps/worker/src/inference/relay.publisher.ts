import { RELAY_PART_MAX_BYTES, type RelayMessage, type ResultItem, type Usage } from '@app/common';
import { isHighSurrogate, jsonPieces, jsonSizeUpTo } from './json-pieces';
import type { RelaySink } from './relay.outbox';

type Payload = RelayMessage extends infer M ? (M extends RelayMessage ? Omit<M, 'rid' | 'att' | 'seq'> : never) : never;

/** A non-stream result as the backend returned it (`choices` or embeddings `data`). */
export interface ResultPayload {
  output: ResultItem[];
  usage: Usage | null;
  system_fingerprint?: string;
}

export interface RelayPublisherLimits {
  /** Sustained bytes per second one job may publish (a token bucket). */
  bytesPerSecond: number;
  /** What may go out at once before the rate applies: ordinary streams never wait. */
  burstBytes: number;
  /** Bytes handed to ioredis but not yet answered by Redis before the job waits for Redis. */
  maxUnackedBytes: number;
}

/**
 * Pub/sub has no flow control: Redis copies every PUBLISH into the output buffer of the
 * gateway's inbox connection at once, and drops that connection (every request on the
 * gateway fails) when the buffer passes `client-output-buffer-limit pubsub` (32 MB hard,
 * 8 MB for 60 s by default). At 16 MiB/s per job a healthy gateway (which parses far
 * faster) keeps the buffer at a message or two, and even a gateway frozen for 250 ms
 * holds only 4 MiB per job in flight: the default limit has room for several such jobs.
 */
export const DEFAULT_RELAY_LIMITS: RelayPublisherLimits = {
  bytesPerSecond: 16 * 1024 * 1024,
  burstBytes: 1024 * 1024,
  maxUnackedBytes: 1024 * 1024,
};

/** Room left in a message for its envelope (`{"t":"part","raw":…,"rid":…,"att":…,"seq":…}`). */
const ENVELOPE_BYTES = 512;
/** Characters per raw slice to try first: JSON escaping can only make a slice larger. */
const SLICE_CHARS = RELAY_PART_MAX_BYTES - ENVELOPE_BYTES;
/**
 * Results whose JSON has about this many characters or more are encoded piece by piece, and
 * sent as parts a stretch of this size at a time (see sendResult).
 */
const LARGE_OUTPUT_CHARS = 4 * RELAY_PART_MAX_BYTES;

/**
 * Publishes one job's relay messages to the gateway inbox that owns the request,
 * numbering them. Publishes are not awaited one by one (ioredis keeps their order on
 * the connection, and the writes of one callback go out together); a failed publish, or one that reached no
 * subscriber (the gateway is gone), aborts the job through `onLost`.
 *
 * Token chunks deliberately ride plain ioredis pub/sub, not the @nestjs/microservices
 * Redis transport that carries the control messages: `npm run bench` (relay-transport)
 * measured the transport's `{pattern, data}` framing and handler dispatch at ~2.5× the
 * process CPU per message, ~2.3× lower throughput and 29% more bytes on the wire.
 */
export class RelayPublisher {
  private seq = 0;
  private pending: Promise<unknown> = Promise.resolve();
  /** While {@link holdLast} is on: the job's last message and whatever was sent after it. */
  private held?: string[];
  private unacked = 0;
  private credit: number;
  private creditAt: number;
  lastSentAt = 0;

  constructor(
    /** Redis, or the outbox that batches the messages of all jobs per gateway and turn. */
    private readonly sink: RelaySink,
    private readonly channel: string,
    private readonly rid: string,
    private readonly att: number,
    private readonly onLost: (why: string) => void,
    private readonly now: () => number = Date.now,
    private readonly limits: RelayPublisherLimits = DEFAULT_RELAY_LIMITS,
  ) {
    this.credit = limits.burstBytes;
    this.creditAt = now();
  }

  send(payload: Payload): void {
    const raw = JSON.stringify({ ...payload, rid: this.rid, att: this.att, seq: this.seq++ });
    if (payload.t === 'done' || payload.t === 'result' || payload.t === 'error' || this.held?.length) {
      // Also what follows a held message (a heartbeat while the job releases its slot): it
      // must not overtake it, or the gateway would see a gap in the numbering.
      this.publishLast(raw);
    } else {
      this.publish(raw);
    }
  }

  /**
   * From now on the message that ends the job (`done`, `result`, `error`) waits for
   * {@link releaseLast}: the job's usage record is made durable first, so that a client that
   * has its whole answer never lacks a record (see WorkerUsageService.beforeLastMessage).
   */
  holdLast(): void {
    this.held ??= [];
  }

  /** Sends what {@link holdLast} kept back, in order, and stops holding. */
  releaseLast(): void {
    const held = this.held ?? [];
    this.held = undefined;
    held.forEach((raw) => this.publish(raw));
  }

  /**
   * Undefined while this job may go on publishing; otherwise a promise to await first
   * (its publishes run ahead of Redis, or of the rate). Checked per message, so it costs
   * the hot path one comparison and no microtask.
   */
  backpressure(): Promise<void> | undefined {
    if (this.unacked > this.limits.maxUnackedBytes) {
      return this.pending.then(() => undefined);
    }
    const now = this.now();
    this.credit = Math.min(
      this.limits.burstBytes,
      this.credit + ((now - this.creditAt) * this.limits.bytesPerSecond) / 1000,
    );
    this.creditAt = now;
    if (this.credit >= 0) {
      return undefined;
    }
    const waitMs = Math.ceil((-this.credit * 1000) / this.limits.bytesPerSecond);
    return new Promise((resolve) => setTimeout(resolve, waitMs));
  }

  /**
   * A non-stream result of any operation. When its JSON fits in {@link RELAY_PART_MAX_BYTES}
   * it goes as one `result` message (assembled from the JSON already made, not stringified
   * again). Else as raw `part` slices of that JSON, paced by {@link backpressure}, then a
   * `result` with the usage only; the gateway writes the slices to its client as they are.
   * A large output (about {@link LARGE_OUTPUT_CHARS} characters of JSON or more) is encoded
   * piece by piece between the parts (jsonPieces), never in one go: one JSON.stringify of a
   * 40 MB result held the event loop for about a second. Stops (throwing the signal's
   * reason) as soon as `signal` aborts.
   */
  async sendResult(result: ResultPayload, signal: AbortSignal): Promise<void> {
    if (jsonSizeUpTo(result.output, LARGE_OUTPUT_CHARS) > LARGE_OUTPUT_CHARS) {
      let raw = '';
      for (const piece of jsonPieces(result.output, SLICE_CHARS)) {
        raw += piece;
        if (raw.length >= LARGE_OUTPUT_CHARS) {
          await this.sendParts(raw, signal);
          raw = '';
        }
      }
      await this.sendParts(raw, signal);
    } else {
      const raw = JSON.stringify(result.output);
      const fingerprint =
        result.system_fingerprint === undefined
          ? ''
          : `,"system_fingerprint":${JSON.stringify(result.system_fingerprint)}`;
      const tail = `,"usage":${JSON.stringify(result.usage)}${fingerprint},${this.envelope()}}`;
      // UTF-16 length × 3 bounds the UTF-8 size: most results are measured without a scan.
      if (
        raw.length * 3 + tail.length <= RELAY_PART_MAX_BYTES ||
        Buffer.byteLength(raw) + tail.length <= RELAY_PART_MAX_BYTES
      ) {
        this.seq += 1;
        this.publishLast(`{"t":"result","output":${raw}${tail}`);
        return;
      }
      await this.sendParts(raw, signal);
    }
    // Sent as parts: the result message carries the usage only.
    signal.throwIfAborted();
    this.send({ t: 'result', usage: result.usage, system_fingerprint: result.system_fingerprint });
  }

  /** `raw` (a stretch of a result's JSON) as `part` messages, giving the event loop a turn after each. */
  private async sendParts(raw: string, signal: AbortSignal): Promise<void> {
    for (const slice of rawSlices(raw, RELAY_PART_MAX_BYTES - ENVELOPE_BYTES)) {
      signal.throwIfAborted();
      const envelope = this.envelope();
      this.seq += 1;
      this.publish(`{"t":"part","raw":${slice},${envelope}}`);
      const wait = this.backpressure();
      // Always give the event loop a turn between parts: other jobs' chunks go out meanwhile.
      await (wait ?? new Promise((resolve) => setImmediate(resolve)));
    }
  }

  /** Resolves once everything sent so far has been handed to Redis. */
  async flush(): Promise<void> {
    await this.pending;
  }

  /** The numbering of the next message, for messages assembled as text. */
  private envelope(): string {
    return `"rid":${JSON.stringify(this.rid)},"att":${this.att},"seq":${this.seq}`;
  }

  private publishLast(raw: string): void {
    if (this.held !== undefined) {
      this.held.push(raw);
    } else {
      this.publish(raw);
    }
  }

  private publish(raw: string): void {
    // UTF-16 length as the byte count: exact for ASCII, and pacing needs no more precision.
    const bytes = raw.length;
    this.unacked += bytes;
    this.credit -= bytes;
    this.lastSentAt = this.now();
    this.pending = this.sink.publish(this.channel, raw).then(
      (receivers) => {
        this.unacked -= bytes;
        if (receivers === 0) {
          this.onLost('no gateway is listening for this request any more');
        }
      },
      (err: Error) => {
        this.unacked -= bytes;
        this.onLost(`cannot publish to Redis: ${err.message}`);
      },
    );
  }
}

/**
 * `raw` cut into slices, each yielded as a JSON string literal of at most `budget` bytes:
 * as long as possible for ASCII, halved when escapes or UTF-8 inflate them. A slice never
 * ends between the two halves of a surrogate pair, so each slice is valid UTF-16 on its own
 * (the gateway encodes each one to UTF-8 separately).
 */
function* rawSlices(raw: string, budget: number): Generator<string> {
  let at = 0;
  let span = budget;
  while (at < raw.length) {
    let end = Math.min(raw.length, at + span);
    if (end < raw.length && isHighSurrogate(raw.charCodeAt(end - 1))) {
      end -= 1;
    }
    const literal = JSON.stringify(raw.slice(at, end));
    const bytes = Buffer.byteLength(literal);
    if (bytes > budget && end - at > 1) {
      span = Math.max(1, Math.floor((end - at) / 2));
      continue;
    }
    at = end;
    if (bytes < budget / 2) {
      span = Math.min(SLICE_CHARS, span * 2); // plainer text again: back to long slices
    }
    yield literal;
  }
}
