import { ClientRedis, ServerRedis } from '@nestjs/microservices';
import { parseRedisUrl } from './redis-url';

/**
 * The control plane (cancel, drain, heartbeats) rides on the @nestjs/microservices Redis
 * transport. Its defaults give up after the first connection loss (`retryAttempts: 0`);
 * a control plane must survive Redis restarts, so retry forever, once a second.
 */
function transportOptions(redisUrl: string) {
  return { ...parseRedisUrl(redisUrl), retryAttempts: Number.MAX_SAFE_INTEGER, retryDelay: 1_000 };
}

export function createControlServer(redisUrl: string): ServerRedis {
  return new ServerRedis(transportOptions(redisUrl));
}

export function createControlClient(redisUrl: string): ClientRedis {
  return new ClientRedis(transportOptions(redisUrl));
}
