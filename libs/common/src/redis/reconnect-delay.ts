/**
 * ioredis `retryStrategy` for every connection that must heal by itself after a Redis
 * restart: quick at first, then every 2 s at most, forever.
 * BullMQ's own default backs off to 20 s, which would keep a gateway refusing requests
 * (or a worker idle) long after Redis is back.
 */
export function reconnectDelay(times: number): number {
  return Math.min(50 * 2 ** times, 2_000);
}
