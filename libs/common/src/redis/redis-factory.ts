import { Logger } from '@nestjs/common';
import Redis, { type RedisOptions } from 'ioredis';
import { reconnectDelay } from './reconnect-delay';

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

const logger = new Logger('Redis');

export function redisOptions(role: RedisRole, name: string): RedisOptions {
  return {
    ...ROLE_OPTIONS[role],
    connectionName: name,
    retryStrategy: reconnectDelay,
  };
}

export function createRedis(url: string, role: RedisRole, name: string): Redis {
  const client = new Redis(url, redisOptions(role, name));
  let lastLogged = 0;
  client.on('error', (err: Error) => {
    // An outage produces an error per reconnect attempt; one line every 5 s is enough.
    const now = Date.now();
    if (now - lastLogged > 5_000) {
      lastLogged = now;
      logger.warn(`${name}: ${err.message}`);
    }
  });
  return client;
}

/** Closes a client without throwing when it is already closed or never connected. */
export async function closeRedis(client: Redis): Promise<void> {
  if (client.status === 'end') {
    return;
  }
  try {
    await client.quit();
  } catch {
    client.disconnect();
  }
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
