import { scrubSecrets } from '../observability/logger';
import { parseRedisUrl } from './redis-url';
import { lazyLogger } from '../observability/lazy-logger';

/** How often a role whose Redis stays unreachable is reported again. */
export const STILL_UNREACHABLE_EVERY_MS = 30_000;

/** Error codes and messages of a Redis connection that cannot be used (as opposed to a failed command). */
const CONNECTION_CODES = new Set([
  'ECONNREFUSED',
  'ECONNRESET',
  'ECONNABORTED',
  'ETIMEDOUT',
  'EPIPE',
  'ENOTFOUND',
  'EAI_AGAIN',
  'EHOSTUNREACH',
  'EHOSTDOWN',
  'ENETUNREACH',
  'ENETDOWN',
]);
const CONNECTION_MESSAGES =
  /Connection is closed|Stream isn't writeable|max retries per request|Connection lost|NOAUTH|WRONGPASS|invalid password|without any password configured|LOADING|MASTERDOWN|certificate|self[- ]signed|TLS|SSL/i;

/** True for errors that mean "this connection does not work right now", not "this command failed". */
export function isConnectionError(err: unknown): boolean {
  if (typeof err === 'string') {
    return CONNECTION_MESSAGES.test(err);
  }
  if (typeof err !== 'object' || err === null) {
    return false;
  }
  const { code, syscall, message } = err as { code?: unknown; syscall?: unknown; message?: unknown };
  return (
    (typeof code === 'string' &&
      (CONNECTION_CODES.has(code) || code.startsWith('ERR_TLS') || code.startsWith('ERR_SSL'))) ||
    syscall === 'connect' ||
    (typeof message === 'string' && CONNECTION_MESSAGES.test(message))
  );
}

/** The one-line reason of an error, without credentials (never the stack: it says nothing about an outage). */
export function connectionErrorReason(err: unknown): string {
  const text = err instanceof Error ? err.message : typeof err === 'string' ? err : JSON.stringify(err);
  return scrubSecrets(text || (err instanceof Error ? err.name : 'unknown error')).slice(0, 300);
}

/** What ConnectionStateLog needs of an ioredis client (or anything that emits the same events). */
export interface ConnectionEvents {
  on(event: 'error', listener: (err: Error) => void): unknown;
  on(event: 'ready' | 'end', listener: () => void): unknown;
}

/**
 * The log of one Redis connection role of this process (`command`, `relay`, `queue`, `control`,
 * ...), shared by every connection of that role. An outage is a story of three parts, not one
 * line per reconnect attempt (ioredis and BullMQ emit an error for every retry, several per
 * second, each with a stack): one line when the role loses Redis, at most one "still
 * unreachable" line every {@link STILL_UNREACHABLE_EVERY_MS}, and one line when every
 * connection of the role is back. Lines are JSON through Nest's Logger (the app's pino
 * logger), carry `redis_role` and `redis_state`, and never a password.
 *
 * Usage, for an ioredis client: `ConnectionStateLog.for('relay').watch(client)`. For a BullMQ
 * Queue or Worker, whose 'error' events also carry failures that are not about the
 * connection: `queue.on('error', (err) => ConnectionStateLog.for('queue').error(err, queue))`
 * plus `.ready(queue)` when it is usable again (see {@link watchBullmq}).
 */
export class ConnectionStateLog {
  private static readonly roles = new Map<string, ConnectionStateLog>();

  /** The shared log of `role` in this process. */
  static for(role: string): ConnectionStateLog {
    let log = ConnectionStateLog.roles.get(role);
    if (log === undefined) {
      log = new ConnectionStateLog(role);
      ConnectionStateLog.roles.set(role, log);
    }
    return log;
  }

  private readonly logger = lazyLogger('Redis');
  /** The connections of this role that failed and have not been ready since. */
  private readonly down = new Set<object>();
  private downSince: number | undefined;
  private lastLineAt = 0;
  private errorsSinceLine = 0;
  private lastReason = '';

  constructor(
    readonly role: string,
    private readonly everyMs = STILL_UNREACHABLE_EVERY_MS,
    private readonly now: () => number = Date.now,
  ) {}

  /** True while at least one connection of this role is known to be down. */
  get isDown(): boolean {
    return this.downSince !== undefined;
  }

  /**
   * A connection of this role reported an error. Connection errors go into the state log;
   * anything else (a BullMQ script error, say) is logged as it comes, once.
   */
  error(err: unknown, connection: object = this): void {
    const reason = connectionErrorReason(err);
    if (!isConnectionError(err)) {
      this.logger.warn({ msg: `${this.role}: ${reason}`, redis_role: this.role });
      return;
    }
    this.down.add(connection);
    const now = this.now();
    this.lastReason = reason;
    if (this.downSince === undefined) {
      this.downSince = now;
      this.lastLineAt = now;
      this.errorsSinceLine = 0;
      this.logger.warn({
        msg: `Redis unreachable (${this.role}): ${reason}; retrying, next report in ${this.everyMs / 1000} s unless it is back`,
        redis_role: this.role,
        redis_state: 'lost',
        reason,
      });
      return;
    }
    this.errorsSinceLine += 1;
    if (now - this.lastLineAt >= this.everyMs) {
      this.logger.warn({
        msg: `Redis still unreachable (${this.role}) after ${Math.round((now - this.downSince) / 1000)} s: ${reason}`,
        redis_role: this.role,
        redis_state: 'unreachable',
        reason,
        down_ms: now - this.downSince,
        errors: this.errorsSinceLine,
      });
      this.lastLineAt = now;
      this.errorsSinceLine = 0;
    }
  }

  /** A connection of this role is usable (again): ioredis 'ready'. */
  ready(connection: object = this): void {
    this.down.delete(connection);
    if (this.downSince === undefined || this.down.size > 0) {
      return;
    }
    const downMs = this.now() - this.downSince;
    this.downSince = undefined;
    this.logger.log({
      msg: `Redis reachable again (${this.role}) after ${(downMs / 1000).toFixed(1)} s`,
      redis_role: this.role,
      redis_state: 'back',
      down_ms: downMs,
      last_reason: this.lastReason,
    });
  }

  /** A connection of this role was closed for good: it no longer counts as down. */
  forget(connection: object): void {
    this.down.delete(connection);
    if (this.down.size === 0) {
      // Nothing of this role is down any more, but nothing came back either: say nothing.
      this.downSince = undefined;
    }
  }

  /** Routes an ioredis client's 'error', 'ready' and 'end' events here (its 'error' listener, too). */
  watch(client: ConnectionEvents): void {
    client.on('error', (err: Error) => this.error(err, client));
    client.on('ready', () => this.ready(client));
    client.on('end', () => this.forget(client));
  }
}

/** What {@link watchBullmq} needs of a BullMQ Queue or Worker (QueueBase). */
export interface BullmqEvents {
  on(event: 'error', listener: (err: Error) => void): unknown;
  getBackend(): { on(event: 'ready', listener: () => void): unknown };
}

/**
 * Logs a BullMQ Queue's or Worker's connection through the state log of `role`. Its 'error'
 * event relays every failed reconnect of its connections (a Worker has two: commands and
 * blocking fetch), and its backend's 'ready' event says when one is back. Also the object's
 * 'error' listener, without which Node would crash (or BullMQ would print to stderr, not JSON).
 */
export function watchBullmq(target: BullmqEvents, role: string): ConnectionStateLog {
  const log = ConnectionStateLog.for(role);
  target.on('error', (err: Error) => log.error(err, target));
  target.getBackend().on('ready', () => log.ready(target));
  return log;
}

/** How long a boot may take to connect to Redis before {@link announceRedisWait} reports a wait. */
export const WAIT_NOTICE_AFTER_MS = 1_000;

/** What {@link announceRedisWait} needs of an ioredis client. */
export interface ReadinessEvents {
  readonly status: string;
  once(event: 'ready', listener: () => void): unknown;
}

/**
 * A process that boots while Redis is unreachable says so, once, in its own words (the
 * connection roles' {@link ConnectionStateLog} lines repeat it at a bounded rate), and says
 * again when Redis answers and it is ready to work. Nothing is logged on a normal boot
 * whose Redis is already connected, nor waited for: the caller never blocks on it.
 */
export function announceRedisWait(client: ReadinessEvents, redisUrl: string, what: string): void {
  const logger = lazyLogger('Redis');
  const first = redisUrl.split(',')[0] ?? redisUrl;
  let at = first;
  try {
    const { host, port } = parseRedisUrl(first.trim());
    at = `${host}:${port}`;
  } catch {
    // The URL was validated at boot; keep the raw text (scrubbed by the logger) if not.
  }
  // A normal boot's connections are usually still connecting here: only a wait that lasts is news.
  const timer = setTimeout(() => {
    if (client.status === 'ready') {
      return;
    }
    const since = Date.now();
    logger.warn({ msg: `${what} is up, waiting for Redis at ${at}`, redis_state: 'waiting', redis_at: at });
    client.once('ready', () =>
      logger.log({
        msg: `Redis at ${at} answers after ${((Date.now() - since) / 1000).toFixed(1)} s: ${what} is ready`,
        redis_state: 'connected',
        redis_at: at,
      }),
    );
  }, WAIT_NOTICE_AFTER_MS);
  timer.unref();
}
