import { RELAY_PART_MAX_BYTES } from '@app/common';
import { Injectable } from '@nestjs/common';
import { type InboxPublish, inboxPublisher, type RedisClient } from '@app/common';
import { InjectPublisher } from '../tokens';

/** Where a job's relay messages go: Redis itself, or the outbox that batches them. */
export interface RelaySink {
  /** Resolves with the number of subscribers that received the message (0: its gateway is gone). */
  publish(channel: string, raw: string): Promise<number>;
}

interface Batch {
  items: string[];
  bytes: number;
  settle: (receivers: number) => void;
  fail: (err: Error) => void;
  sent: Promise<number>;
}

/**
 * One PUBLISH per gateway inbox per event-loop turn, carrying every message that the jobs
 * of this worker produced for that gateway during the turn (a JSON array of the messages,
 * each one unchanged; a lone message goes as itself). With many open streams each turn
 * reads chunks of many jobs: one message each cost Redis a PUBLISH and a delivery, and the
 * gateway one parse and one event. Order is kept: a job's messages all go to one inbox, in
 * the order sent, and batches leave in order on the one connection.
 *
 * A batch never grows past {@link RELAY_PART_MAX_BYTES} (the relay's bound on one pub/sub
 * message, see PartMessage): a large `part` starts and ends a batch of its own.
 */
@Injectable()
export class RelayOutbox implements RelaySink {
  private readonly open = new Map<string, Batch>();
  private scheduled = false;

  private readonly publishTo: InboxPublish;

  constructor(@InjectPublisher() redis: RedisClient) {
    this.publishTo = inboxPublisher(redis);
  }

  publish(channel: string, raw: string): Promise<number> {
    let batch = this.open.get(channel);
    if (batch !== undefined && batch.bytes + raw.length + 1 > RELAY_PART_MAX_BYTES) {
      this.send(channel, batch);
      batch = undefined;
    }
    if (batch === undefined) {
      batch = newBatch();
      this.open.set(channel, batch);
      if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(() => this.flush());
      }
    }
    batch.items.push(raw);
    batch.bytes += raw.length + 1;
    return batch.sent;
  }

  /** Sends every open batch now (the end of the turn). */
  flush(): void {
    this.scheduled = false;
    for (const [channel, batch] of this.open) {
      this.send(channel, batch);
    }
  }

  private send(channel: string, batch: Batch): void {
    this.open.delete(channel);
    const raw = batch.items.length === 1 ? (batch.items[0] ?? '') : `[${batch.items.join(',')}]`;
    this.publishTo(channel, raw).then(batch.settle, batch.fail);
  }
}

function newBatch(): Batch {
  let settle!: (receivers: number) => void;
  let fail!: (err: Error) => void;
  const sent = new Promise<number>((resolve, reject) => {
    settle = resolve;
    fail = reject;
  });
  return { items: [], bytes: 0, settle, fail, sent };
}
