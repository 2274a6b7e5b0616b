import Redis, { type RedisOptions } from 'ioredis';
import { coalesceWrites } from './coalesce-writes';
import { ConnectionStateLog } from './connection-state-log';
import { reconnectDelay } from './reconnect-delay';
import { endRedis, redisUsable, trackConnection } from './shutdown';

// libs/common/src/index.ts exports this file: the rest of the redis module's public surface.
export * from './coalesce-writes';
export * from './connection-state-log';
export * from './shutdown';

/**
 * How each kind of connection must behave (BullMQ's production guide):
 * - `command`: request-path commands; fail fast while Redis is down (no offline queue)
 *   so callers answer 503 at once instead of hanging.
 * - `subscriber`: a dedicated pub/sub connection; ioredis re-subscribes on reconnect.
 * - `bullmq-worker`: BullMQ workers block on Redis and require `maxRetriesPerRequest: null`.
 */
export type RedisRole = 'command' | 'subscriber' | 'bullmq-worker';

const ROLE_OPTIONS: Record<RedisRole, RedisOptions> = {
  command: { enableOfflineQueue: false, maxRetriesPerRequest: 1, enableAutoPipelining: true },
  subscriber: { enableOfflineQueue: true, maxRetriesPerRequest: null },
  'bullmq-worker': { enableOfflineQueue: true, maxRetriesPerRequest: null },
};

export function redisOptions(role: RedisRole, name: string): RedisOptions {
  return {
    ...ROLE_OPTIONS[role],
    connectionName: name,
    retryStrategy: reconnectDelay,
  };
}

/**
 * A client whose outages are logged once per state change through the {@link ConnectionStateLog}
 * of its role (`logAs`, default: the role), and which the shutdown deadline force-closes.
 */
export function createRedis(url: string, role: RedisRole, name: string, logAs: string = role): Redis {
  const client = new Redis(url, redisOptions(role, name));
  if (role === 'command') {
    coalesceWrites(client);
  }
  ConnectionStateLog.for(logAs).watch(client);
  return trackConnection(client);
}

/**
 * Closes a client without throwing, and without waiting for a Redis that cannot answer:
 * QUIT on a reconnecting client waits in its offline queue until Redis is back, which made
 * shutdown hang for as long as the outage lasted. A connected client gets QUIT (pending
 * replies arrive first) for at most `timeoutMs`.
 */
export async function closeRedis(client: Redis, timeoutMs = 1_000): Promise<void> {
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
export function whenReady(client: Redis, timeoutMs: number): Promise<void> {
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
