import type { RelayMessage } from '@app/common';
import type Redis from 'ioredis';

type Payload = RelayMessage extends infer M ? (M extends RelayMessage ? Omit<M, 'rid' | 'att' | 'seq'> : never) : never;

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
  lastSentAt = 0;

  constructor(
    private readonly redis: Redis,
    private readonly channel: string,
    private readonly rid: string,
    private readonly att: number,
    private readonly onLost: (why: string) => void,
    private readonly now: () => number = Date.now,
  ) {}

  send(payload: Payload): void {
    const msg = { ...payload, rid: this.rid, att: this.att, seq: this.seq++ };
    this.lastSentAt = this.now();
    this.pending = this.redis.publish(this.channel, JSON.stringify(msg)).then(
      (receivers) => {
        if (receivers === 0) {
          this.onLost('no gateway is listening for this request any more');
        }
      },
      (err: Error) => this.onLost(`cannot publish to Redis: ${err.message}`),
    );
  }

  /** Resolves once everything sent so far has been handed to Redis. */
  async flush(): Promise<void> {
    await this.pending;
  }
}
