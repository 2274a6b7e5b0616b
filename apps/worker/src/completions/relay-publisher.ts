import { type ChoiceDelta, type Logprobs, RELAY_PART_MAX_BYTES, type RelayMessage, type Usage } from '@app/common';
import type Redis from 'ioredis';

type Payload = RelayMessage extends infer M ? (M extends RelayMessage ? Omit<M, 'rid' | 'att' | 'seq'> : never) : never;

/** A non-stream completion as the backend returned it. */
export interface ResultPayload {
  choices: ChoiceDelta[];
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

/** Below this lower bound of its size (see leastSize) a result surely fits in one message. */
const SURELY_SMALL = RELAY_PART_MAX_BYTES / 16;
/** Room left in a part for its envelope (`{"t":"part","choices":[…],"rid":…,"att":…,"seq":…}`). */
const ENVELOPE_BYTES = 512;

/**
 * Publishes one job's relay messages to the gateway inbox that owns the request,
 * numbering them. Publishes are not awaited one by one (ioredis keeps their order on
 * the connection and auto-pipelines them); a failed publish, or one that reached no
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
  private unacked = 0;
  private credit: number;
  private creditAt: number;
  lastSentAt = 0;

  constructor(
    private readonly redis: Redis,
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
    this.publish(JSON.stringify({ ...payload, rid: this.rid, att: this.att, seq: this.seq++ }));
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
   * A non-stream result: one `result` message when it fits in {@link RELAY_PART_MAX_BYTES}
   * (the common case costs one stringify, as before), else `part` messages of at most that
   * size, paced by {@link backpressure}, then a `result` with the usage. Stops (throwing
   * the signal's reason) as soon as `signal` aborts.
   */
  async sendResult(result: ResultPayload, signal: AbortSignal): Promise<void> {
    const whole: Payload = {
      t: 'result',
      choices: result.choices,
      usage: result.usage,
      system_fingerprint: result.system_fingerprint,
    };
    const least = leastSize(result.choices);
    if (least <= SURELY_SMALL) {
      this.send(whole);
      return;
    }
    if (least <= RELAY_PART_MAX_BYTES) {
      // Only measured when it may fit: a surely large result is never stringified whole.
      const raw = JSON.stringify({ ...whole, rid: this.rid, att: this.att, seq: this.seq });
      if (Buffer.byteLength(raw) <= RELAY_PART_MAX_BYTES) {
        this.seq += 1;
        this.publish(raw);
        return;
      }
    }
    const budget = RELAY_PART_MAX_BYTES - ENVELOPE_BYTES;
    let part: string[] = [];
    let size = 0;
    for (const piece of pieces(result.choices, budget)) {
      const bytes = Buffer.byteLength(piece) + 1;
      if (part.length > 0 && size + bytes > budget) {
        await this.sendPart(part, signal);
        part = [];
        size = 0;
      }
      part.push(piece);
      size += bytes;
    }
    if (part.length > 0) {
      await this.sendPart(part, signal);
    }
    this.send({ t: 'result', choices: [], usage: result.usage, system_fingerprint: result.system_fingerprint });
  }

  /** Resolves once everything sent so far has been handed to Redis. */
  async flush(): Promise<void> {
    await this.pending;
  }

  private async sendPart(pieceJson: string[], signal: AbortSignal): Promise<void> {
    signal.throwIfAborted();
    // Assembled from the pieces' JSON, which was measured already: no second stringify.
    const envelope = `"rid":${JSON.stringify(this.rid)},"att":${this.att},"seq":${this.seq++}`;
    this.publish(`{"t":"part","choices":[${pieceJson.join(',')}],${envelope}}`);
    const wait = this.backpressure();
    // Always give the event loop a turn: the next part's stringify is a few ms of work.
    await (wait ?? new Promise((resolve) => setImmediate(resolve)));
    signal.throwIfAborted();
  }

  private publish(raw: string): void {
    // UTF-16 length as the byte count: exact for ASCII, and pacing needs no more precision.
    const bytes = raw.length;
    this.unacked += bytes;
    this.credit -= bytes;
    this.lastSentAt = this.now();
    this.pending = this.redis.publish(this.channel, raw).then(
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
 * A lower bound of the serialized size in bytes: each choice's fixed keys (~60 bytes), its
 * text (escapes and UTF-8 only add), and ≥ 16 bytes per logprob entry (four array slots).
 * Too small ⇒ one message without measuring; too large ⇒ split without stringifying it whole.
 */
function leastSize(choices: ChoiceDelta[]): number {
  let size = 0;
  for (const c of choices) {
    size += 60 + c.text.length + (c.logprobs === null ? 0 : 16 * c.logprobs.tokens.length);
  }
  return size;
}

/**
 * The choices as serialized deltas of at most `budget` bytes each, in order: per choice its
 * text in slices, then its logprobs in slices of entries, the last piece carrying the
 * finish_reason. Concatenating a choice's pieces (text, and each logprobs array) gives the
 * choice back exactly; a slice never splits a surrogate pair.
 */
function* pieces(choices: ChoiceDelta[], budget: number): Generator<string> {
  for (const c of choices) {
    const lp = c.logprobs;
    for (const { text, last } of textSlices(c.text, budget)) {
      yield pieceJson(c.index, text, null, lp === null && last ? c.finish_reason : null);
    }
    if (lp !== null) {
      yield* logprobSlices(c, lp, budget);
    }
  }
}

function pieceJson(
  index: number,
  text: string,
  logprobs: Logprobs | null,
  finish: ChoiceDelta['finish_reason'],
): string {
  const piece: ChoiceDelta = { index, text, logprobs, finish_reason: finish };
  return JSON.stringify(piece);
}

/**
 * Text slices whose JSON fits the budget, produced one at a time (so an abort stops the
 * work too): as long as possible for ASCII, halved when escapes or UTF-8 inflate them.
 */
function* textSlices(text: string, budget: number): Generator<{ text: string; last: boolean }> {
  if (text.length === 0) {
    yield { text: '', last: true };
    return;
  }
  let at = 0;
  let span = budget - 128;
  while (at < text.length) {
    let end = Math.min(text.length, at + span);
    if (end < text.length && isHighSurrogate(text.charCodeAt(end - 1))) {
      end -= 1;
    }
    const slice = text.slice(at, end);
    if (Buffer.byteLength(JSON.stringify(slice)) + 128 > budget && end - at > 1) {
      span = Math.max(1, Math.floor((end - at) / 2));
      continue;
    }
    at = end;
    yield { text: slice, last: at === text.length };
  }
}

function* logprobSlices(c: ChoiceDelta, lp: Logprobs, budget: number): Generator<string> {
  const total = lp.tokens.length;
  let at = 0;
  let span = 1024;
  do {
    const end = Math.min(total, at + span);
    const last = end === total;
    const json = pieceJson(
      c.index,
      '',
      {
        tokens: lp.tokens.slice(at, end),
        token_logprobs: lp.token_logprobs.slice(at, end),
        top_logprobs: lp.top_logprobs === null ? null : lp.top_logprobs.slice(at, end),
        text_offset: lp.text_offset.slice(at, end),
      },
      last ? c.finish_reason : null,
    );
    if (Buffer.byteLength(json) > budget && end - at > 1) {
      span = Math.max(1, Math.floor((end - at) / 2));
      continue;
    }
    yield json;
    at = end;
    if (json.length < budget / 4) {
      span *= 2;
    }
  } while (at < total);
}

function isHighSurrogate(code: number): boolean {
  return code >= 0xd800 && code <= 0xdbff;
}
