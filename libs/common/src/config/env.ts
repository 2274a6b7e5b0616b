import { z } from 'zod';
import { parseRedisSeeds } from '../redis/redis-url';

/**
 * The only place in the code base that reads `process.env`. Everything else receives
 * a typed, validated {@link Env} through the config module, so a bad value stops the
 * process at boot with a message that names the variable instead of failing later.
 */
const int = (def: number, min = 0) => z.coerce.number().int().min(min).default(def);
const port = (def: number) => int(def, 0).refine((p) => p <= 65535, 'must be a TCP port (0-65535)');
/** "true"/"false" (also 1/0, yes/no, on/off); `z.coerce.boolean()` would take "false" as true. */
const flag = (def: boolean) =>
  z
    .string()
    .default('')
    .transform((v) => v.trim().toLowerCase())
    .pipe(z.enum(['true', 'false', '1', '0', 'yes', 'no', 'on', 'off', '']))
    .transform((v) => (v === '' ? def : ['true', '1', 'yes', 'on'].includes(v)));

export const envSchema = z.object({
  PORT: port(8000),
  HOST: z.string().min(1).default('0.0.0.0'),
  REDIS_URL: z
    .string()
    .default('redis://127.0.0.1:6379')
    .refine((u) => /^rediss?:\/\//.test(u), 'must be a redis:// or rediss:// URL'),
  AQUEDUCT_REDIS_PREFIX: z
    .string()
    .regex(/^[A-Za-z0-9_.-]+$/, 'may contain only letters, digits, "_", "." and "-"')
    .default('aqueduct'),
  /** `true`: REDIS_URL is a comma-separated list of the seed nodes of a Redis Cluster (checked in {@link parseEnv}). */
  AQUEDUCT_REDIS_CLUSTER: flag(false),
  AQUEDUCT_CONFIG: z.string().min(1).optional(),
  AQUEDUCT_ADMIN_KEY: z
    .string()
    .min(16, 'must be at least 16 characters long')
    .optional()
    .or(z.literal('').transform(() => undefined)),
  AQUEDUCT_REQUEST_TIMEOUT_MS: int(60_000, 1),
  /** Largest accepted request body; larger bodies get 413. */
  AQUEDUCT_MAX_BODY_BYTES: int(4 * 1024 * 1024, 1024),
  /** A request whose relay is silent this long is failed (worker death, stalled upstream). */
  AQUEDUCT_IDLE_TIMEOUT_MS: int(15_000, 100),
  /** How long a stream may hold its HTTP status while waiting for its first token. */
  AQUEDUCT_COMMIT_TIMEOUT_MS: int(8_000, 0),
  /** How often workers announce themselves; they count as dead after three missed beats. */
  AQUEDUCT_HEARTBEAT_MS: int(2_000, 50),
  WORKER_CONCURRENCY: int(64, 1),
  /** `max_parallel_requests` of tokens that have none of their own. */
  AQUEDUCT_DEFAULT_MAX_PARALLEL: int(100, 1),
  /**
   * Lease of one `max_parallel_requests` slot: a worker renews it every third of this while
   * the request runs, and a crashed worker's slot frees itself after at most this long.
   */
  AQUEDUCT_SLOT_LEASE_MS: int(30_000, 300),
  /** Requests waiting in the queue beyond which new ones are refused with 503 + Retry-After. */
  AQUEDUCT_MAX_QUEUE_DEPTH: int(5_000, 1),
  /** Longest wait for a deployment's capacity before 503 `queue_timeout` (never past the request's timeout). */
  AQUEDUCT_MAX_QUEUE_WAIT_MS: int(30_000, 1),
  /** How long usage records are kept. */
  AQUEDUCT_USAGE_RETENTION_HOURS: int(168, 1),
  /**
   * Proxies whose X-Forwarded-For is believed for the client IP (Express "trust proxy"
   * syntax: IPs, CIDRs, "loopback", "uniquelocal"); empty = use the socket address.
   */
  AQUEDUCT_TRUSTED_PROXIES: z
    .string()
    .default('')
    .transform((v) =>
      v
        .split(',')
        .map((p) => p.trim())
        .filter(Boolean),
    ),
  /** How long a SIGTERM'd worker (or gateway) lets in-flight streams finish. */
  AQUEDUCT_SHUTDOWN_GRACE_MS: int(25_000, 0),
  LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  /**
   * Port of the worker's own HTTP listener (`GET /metrics`, `GET /health`); 0 turns it off.
   * A port that is taken only logs a warning: the worker keeps taking jobs without it.
   */
  WORKER_METRICS_PORT: port(9464),
  WORKER_METRICS_HOST: z.string().min(1).default('0.0.0.0'),
  /** When true, `/metrics` (gateway and workers) needs the admin key (Bearer, or Basic password). */
  AQUEDUCT_METRICS_REQUIRE_ADMIN: flag(false),
});

export type Env = z.infer<typeof envSchema>;

export class ConfigError extends Error {
  override readonly name = 'ConfigError';

  /**
   * @param keys the environment variables (or router config fields) at fault, so that a
   *   fatal line can name them in a field of its own; never their values, which may be secrets.
   */
  constructor(
    message: string,
    readonly keys: readonly string[] = [],
  ) {
    super(message);
  }
}

/** Parses and validates the environment; throws a {@link ConfigError} naming every bad variable. */
export function parseEnv(source: Record<string, string | undefined>): Env {
  const result = envSchema.safeParse(source);
  if (!result.success) {
    const lines = result.error.issues.map((i) => `  ${i.path.join('.')}: ${i.message}`);
    const keys = [...new Set(result.error.issues.map((i) => String(i.path[0] ?? '(environment)')))];
    throw new ConfigError(`Invalid environment:\n${lines.join('\n')}`, keys);
  }
  checkRedisTopology(result.data);
  if (result.data.AQUEDUCT_METRICS_REQUIRE_ADMIN && result.data.AQUEDUCT_ADMIN_KEY === undefined) {
    throw new ConfigError(
      'Invalid environment:\n  AQUEDUCT_METRICS_REQUIRE_ADMIN: needs AQUEDUCT_ADMIN_KEY to be set (in workers too)',
      ['AQUEDUCT_METRICS_REQUIRE_ADMIN', 'AQUEDUCT_ADMIN_KEY'],
    );
  }
  return result.data;
}

/** A seed list only with AQUEDUCT_REDIS_CLUSTER, and then a valid one (one message per fault, no secrets). */
function checkRedisTopology(env: Env): void {
  if (!env.AQUEDUCT_REDIS_CLUSTER) {
    if (env.REDIS_URL.includes(',')) {
      throw new ConfigError(
        'Invalid environment:\n  REDIS_URL: lists several nodes; set AQUEDUCT_REDIS_CLUSTER=true for a Redis Cluster',
        ['REDIS_URL', 'AQUEDUCT_REDIS_CLUSTER'],
      );
    }
    return;
  }
  try {
    parseRedisSeeds(env.REDIS_URL);
  } catch (err) {
    throw new ConfigError(
      `Invalid environment:\n  REDIS_URL: with AQUEDUCT_REDIS_CLUSTER=true, a comma-separated list of seed nodes: ${(err as Error).message}`,
      ['REDIS_URL'],
    );
  }
}

export function loadEnv(): Env {
  return parseEnv(process.env);
}

/** The raw environment, for the `os.environ/NAME` references of a worker's router config. */
export function processEnv(): Record<string, string | undefined> {
  return process.env;
}
