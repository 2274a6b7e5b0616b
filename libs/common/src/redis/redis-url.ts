/**
 * ioredis accepts URLs, but the @nestjs/microservices Redis transport wants discrete
 * options; this keeps REDIS_URL the single source of truth for both.
 */
export interface RedisEndpoint {
  host: string;
  port: number;
  username?: string;
  password?: string;
  db?: number;
  tls?: Record<string, never>;
}

export function parseRedisUrl(url: string): RedisEndpoint {
  const u = new URL(url);
  const db = u.pathname.length > 1 ? Number(u.pathname.slice(1)) : undefined;
  return {
    host: u.hostname.replace(/^\[|\]$/g, '') || '127.0.0.1',
    port: u.port === '' ? 6379 : Number(u.port),
    ...(u.username !== '' && { username: decodeURIComponent(u.username) }),
    ...(u.password !== '' && { password: decodeURIComponent(u.password) }),
    ...(db !== undefined && Number.isInteger(db) && { db }),
    ...(u.protocol === 'rediss:' && { tls: {} }),
  };
}

/**
 * The passwords in a REDIS_URL (or a comma-separated list of them), for
 * `redactFromLogs`: whatever a driver or Redis itself puts in an error, they are never logged.
 */
export function redisUrlSecrets(urls: string): string[] {
  return urls
    .split(',')
    .map((u) => {
      try {
        return parseRedisUrl(u.trim()).password;
      } catch {
        return undefined;
      }
    })
    .filter((p): p is string => p !== undefined);
}
