import Redis, { Cluster, type ClusterOptions, type RedisOptions } from 'ioredis';
import type { Env } from '../config/env';
import { ACCOUNT_COMMAND } from '../usage/usage-store';
import { coalesceWrites } from './coalesce-writes';
import { ConnectionStateLog } from './connection-state-log';
import { reconnectDelay } from './reconnect-delay';
import { clusterNodeAuth, parseRedisSeeds } from './redis-url';
import { endRedis, redisUsable, trackConnection } from './shutdown';

// libs/common/src/index.ts exports this file: the rest of the redis module's public surface.
export * from './coalesce-writes';
export * from './connection-state-log';
export * from './inbox-transport';
export * from './shutdown';

/**
 * A connection to one Redis or to a Redis Cluster (AQUEDUCT_REDIS_CLUSTER). Both speak the
 * same commands; what differs is that on a cluster every multi-key command, script, MULTI and
 * pipeline must keep its keys in one hash slot (see names.ts), which the key layout ensures.
 */
export type RedisClient = Redis | Cluster;

/** Where the connections go: the two variables that decide it. */
export type RedisTarget = Pick<Env, 'REDIS_URL' | 'AQUEDUCT_REDIS_CLUSTER'>;

/**
 * How each kind of connection must behave (BullMQ's production guide):
 * - `command`: request-path commands; fail fast while Redis is down (no offline queue)
 *   so callers answer 503 at once instead of hanging.
 * - `subscriber`: a dedicated pub/sub connection; ioredis re-subscribes on reconnect.
 * - `queue-producer`: the gateway's BullMQ connection: fails fast like `command`.
 * - `queue-consumer`: the workers' BullMQ connection: BullMQ blocks on it and requires
 *   `maxRetriesPerRequest: null`.
 *
 * With one Redis none uses ioredis' auto-pipelining: the connections that carry many small
 * commands coalesce their socket writes instead (coalesce-writes.ts), which merges what one
 * callback issues into one write, without auto-pipelining's cost: ioredis builds a Pipeline
 * per tick that copies every script defined on the client (BullMQ defines dozens) and a
 * promise chain per command. Measured on the `command` role (one gateway, one worker,
 * gateway + worker CPU): non-stream c=16 1.05–1.16 ms per request with it, 0.89–0.91 without
 * (930 → 1140 req/s); streams of 64 chunks 5 ms apart 12.9–13.0 ms per stream with it,
 * 9.7–10.9 without. A cluster's `command` connections keep it (see clusterOptions).
 */
export type RedisRole = 'command' | 'subscriber' | 'queue-producer' | 'queue-consumer';

interface RoleOptions {
  enableOfflineQueue?: boolean;
  maxRetriesPerRequest: number | null;
  /** One socket write per callback (coalesce-writes.ts) for connections that carry many small commands. */
  coalesce: boolean;
}

const ROLE_OPTIONS: Record<RedisRole, RoleOptions> = {
  command: { enableOfflineQueue: false, maxRetriesPerRequest: 1, coalesce: true },
  subscriber: { enableOfflineQueue: true, maxRetriesPerRequest: null, coalesce: false },
  'queue-producer': { enableOfflineQueue: false, maxRetriesPerRequest: 1, coalesce: true },
  'queue-consumer': { maxRetriesPerRequest: null, coalesce: true },
};

/** The options of one Redis of `role`, as ioredis takes them (`name` = CLIENT SETNAME, if any). */
export function redisOptions(role: RedisRole, name?: string): RedisOptions {
  const { coalesce: _, ...options } = ROLE_OPTIONS[role];
  return { ...options, ...(name !== undefined && { connectionName: name }), retryStrategy: reconnectDelay };
}

/**
 * The same role on a cluster. ioredis applies the offline queue, auto-pipelining and
 * reconnect policy to the cluster as a whole, and the rest to each node connection it opens
 * (`redisOptions`, which also carry the seeds' password and TLS). The ready check waits for
 * `cluster_state:ok`, and every command goes to a master: a replica may lag behind, and the
 * scripts' read-then-write logic (limits, claims) must never see a stale value.
 */
export function clusterOptions(seedList: string, role: RedisRole, name?: string): ClusterOptions {
  const { enableOfflineQueue, maxRetriesPerRequest } = ROLE_OPTIONS[role];
  return {
    ...(enableOfflineQueue !== undefined && { enableOfflineQueue }),
    // Kept on a cluster, where it was never measured against coalescing alone, and where the
    // one run of the cluster suite without it saw a relay gap (a 502 on a stack's first
    // request) that has not been explained: the cluster path stays the one its tests passed on.
    ...(role === 'command' && { enableAutoPipelining: true, autoPipeliningIgnoredCommands: [ACCOUNT_COMMAND] }),
    enableReadyCheck: true,
    scaleReads: 'master',
    // A subscriber's channels are sharded (see inbox-transport.ts): one subscriber connection
    // per shard, moved with its slots.
    ...(role === 'subscriber' && { shardedSubscribers: true }),
    clusterRetryStrategy: reconnectDelay,
    redisOptions: {
      ...clusterNodeAuth(parseRedisSeeds(seedList)),
      maxRetriesPerRequest,
      ...(name !== undefined && { connectionName: name }),
    },
  };
}

/** Cluster seeds as ioredis takes them. */
export function clusterSeeds(seedList: string): { host: string; port: number }[] {
  return parseRedisSeeds(seedList).map(({ host, port }) => ({ host, port }));
}

/**
 * A bare connection of `role`: a `Redis`, or a `Cluster` when AQUEDUCT_REDIS_CLUSTER is set.
 * No logging and no shutdown tracking (BullMQ's connections get theirs through their queues,
 * see queue.module.ts); everything else should use {@link createRedis}.
 */
export function connectRedis(target: RedisTarget, role: RedisRole, name?: string): RedisClient {
  const coalesce = ROLE_OPTIONS[role].coalesce;
  if (!target.AQUEDUCT_REDIS_CLUSTER) {
    const client = new Redis(target.REDIS_URL, redisOptions(role, name));
    return coalesce ? coalesceWrites(client) : client;
  }
  const cluster = new Cluster(clusterSeeds(target.REDIS_URL), clusterOptions(target.REDIS_URL, role, name));
  if (coalesce) {
    // One connection per node, opened as the cluster discovers them: each coalesces its own writes.
    cluster.on('+node', (node: Redis) => coalesceWrites(node));
  }
  return cluster;
}

/**
 * A client whose outages are logged once per state change through the {@link ConnectionStateLog}
 * of its role (`logAs`, default: the role), and which the shutdown deadline force-closes.
 */
export function createRedis(target: RedisTarget, role: RedisRole, name: string, logAs: string = role): RedisClient {
  const client = connectRedis(target, role, name);
  ConnectionStateLog.for(logAs).watch(client);
  return trackConnection(client);
}

/**
 * Closes a client without throwing, and without waiting for a Redis that cannot answer:
 * QUIT on a reconnecting client waits in its offline queue until Redis is back, which made
 * shutdown hang for as long as the outage lasted. A connected client gets QUIT (pending
 * replies arrive first) for at most `timeoutMs`.
 */
export async function closeRedis(client: RedisClient, timeoutMs = 1_000): Promise<void> {
  if (client.status === 'end') {
    return;
  }
  if (redisUsable(client)) {
    let timer: NodeJS.Timeout | undefined;
    // The fallback timer is cleared once QUIT answers: a closed client must not keep a
    // finished process (the CLI) alive for the rest of the timeout.
    await Promise.race([
      client.quit().catch(() => undefined),
      new Promise((resolve) => (timer = setTimeout(resolve, timeoutMs))),
    ]);
    clearTimeout(timer);
  }
  endRedis(client);
}

/** Resolves when the client is connected, or after `timeoutMs` (the caller copes with a down Redis). */
export function whenReady(client: RedisClient, timeoutMs: number): Promise<void> {
  if (client.status === 'ready') {
    return Promise.resolve();
  }
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      client.off('ready', done);
      resolve();
    };
    const timer = setTimeout(done, timeoutMs);
    client.once('ready', done);
  });
}
