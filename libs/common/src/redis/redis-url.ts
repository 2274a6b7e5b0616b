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
 * The seed nodes of a Redis Cluster, from a comma-separated REDIS_URL. ioredis' Cluster takes
 * one set of connection options for every node it discovers, so the seeds must agree on
 * scheme (TLS), user and password; and a cluster has only database 0. Throws an Error whose
 * message says what is wrong (never a password).
 */
export function parseRedisSeeds(list: string): RedisEndpoint[] {
  const urls = list.split(',').map((u) => u.trim());
  const seeds = urls.map((u, i) => {
    if (!/^rediss?:\/\/[^/]/.test(u)) {
      throw new Error(`seed ${i + 1} must be a redis:// or rediss:// URL with a host`);
    }
    let seed: RedisEndpoint;
    try {
      seed = parseRedisUrl(u);
    } catch {
      throw new Error(`seed ${i + 1} is not a valid URL`);
    }
    if (!Number.isInteger(seed.port) || seed.port < 1 || seed.port > 65535) {
      throw new Error(`seed ${i + 1} must have a TCP port (1-65535)`);
    }
    if ((seed.db ?? 0) !== 0 || new URL(u).pathname.length > 1) {
      throw new Error(`seed ${i + 1}: a Redis Cluster has no database number (drop the "/<db>" path)`);
    }
    return seed;
  });
  const [first] = seeds;
  if (first === undefined) {
    throw new Error('needs at least one seed node');
  }
  const auth = (s: RedisEndpoint) => JSON.stringify([s.username ?? '', s.password ?? '', s.tls !== undefined]);
  if (seeds.some((s) => auth(s) !== auth(first))) {
    throw new Error('every seed must use the same scheme (redis:// or rediss://), user and password');
  }
  return seeds;
}

/** The options every node connection of a cluster shares (taken from the first seed: they agree). */
export function clusterNodeAuth(seeds: readonly RedisEndpoint[]): Pick<RedisEndpoint, 'username' | 'password' | 'tls'> {
  const { username, password, tls } = seeds[0] ?? {};
  return {
    ...(username !== undefined && { username }),
    ...(password !== undefined && { password }),
    ...(tls !== undefined && { tls }),
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
