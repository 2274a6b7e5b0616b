import { Cluster } from 'ioredis';
import { slotMaster } from './hash-slot';
import type { RedisClient } from './redis-factory';

/**
 * How relay messages reach a gateway's inbox channel: classic pub/sub on one Redis, sharded
 * pub/sub (SPUBLISH / SSUBSCRIBE, Redis 7+) on a cluster. A cluster broadcasts every classic
 * PUBLISH to all its nodes (its cost grows with the cluster), and PUBLISH then counts only the
 * subscribers on the node it was sent to: a worker would take "0 receivers" for a gateway that
 * is gone. A sharded channel lives in its name's slot, like a key: SPUBLISH goes to the shard
 * that owns it, where every subscriber of the channel is, and its count is the real one. Each
 * gateway's inbox has its own name, hence its own slot: the relay spreads over the shards.
 *
 * The choice is made once per connection, so the one-Redis path stays one plain PUBLISH.
 */
export type InboxPublish = (channel: string, raw: string) => Promise<number>;

export function inboxPublisher(client: RedisClient): InboxPublish {
  if (client instanceof Cluster) {
    return async (channel, raw) => Number(await client.spublish(channel, raw));
  }
  return (channel, raw) => client.publish(channel, raw);
}

/**
 * Subscribes `client` (a subscriber-role connection) to one inbox and routes its messages to
 * `onMessage`. ioredis re-subscribes after a reconnect; on a cluster (created with
 * `shardedSubscribers`, see redis-factory.ts) also on the node that owns the slot after a
 * slot migration or failover. A message lost meanwhile shows as a gap in the stream's
 * sequence numbers, which the relay turns into a clean error.
 */
export function subscribeInbox(
  client: RedisClient,
  channel: string,
  onMessage: (raw: string) => void,
): Promise<unknown> {
  if (client instanceof Cluster) {
    client.on('smessage', (_channel: string, raw: string) => onMessage(raw));
    return client.ssubscribe(channel);
  }
  client.on('message', (_channel: string, raw: string) => onMessage(raw));
  return client.subscribe(channel);
}

/**
 * How many gateways listen on an inbox now: `PUBSUB NUMSUB` on one Redis. On a cluster the
 * inbox is a sharded channel, which only the node owning its slot knows about (NUMSUB
 * anywhere would say 0, and a worker would drop a live gateway's job as orphaned): there it
 * is `PUBSUB SHARDNUMSUB`, asked of that node.
 */
export async function inboxSubscribers(client: RedisClient, channel: string): Promise<number> {
  if (!(client instanceof Cluster)) {
    const reply = (await client.call('PUBSUB', 'NUMSUB', channel)) as [string, number];
    return Number(reply[1]);
  }
  const node = slotMaster(client, channel);
  if (node === undefined) {
    throw new Error(`no node owns the slot of ${channel} right now`);
  }
  const reply = (await node.call('PUBSUB', 'SHARDNUMSUB', channel)) as [string, number];
  return Number(reply[1]);
}

/** On a cluster, how long {@link inboxDrained} lets messages already on their way arrive. */
const CLUSTER_SETTLE_MS = 50;
/** A subscriber that cannot answer a PING in this long cannot vouch for anything. */
const DRAIN_TIMEOUT_MS = 1_000;

/**
 * Resolves once this gateway has taken in the relay messages Redis pushed to its inbox
 * before the call. On one Redis that is exact: a PING on the subscriber connection, whose
 * reply comes after them on the same socket. A cluster's sharded subscriptions have
 * connections of their own inside ioredis, so there it is a short pause and a turn of the
 * event loop after it (the poll phase reads what has arrived): a weaker promise. Rejects
 * when the subscriber does not answer within a second (reconnecting, or Redis is down).
 */
export async function inboxDrained(subscriber: RedisClient): Promise<void> {
  if (subscriber instanceof Cluster) {
    await new Promise((resolve) => setTimeout(resolve, CLUSTER_SETTLE_MS));
    await new Promise((resolve) => setImmediate(resolve));
    return;
  }
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error('the inbox subscriber did not answer')), DRAIN_TIMEOUT_MS);
  });
  try {
    await Promise.race([subscriber.ping(), late]);
  } finally {
    clearTimeout(timer);
  }
}
