import { lazyLogger } from '../observability/lazy-logger';

/**
 * Stopping a process whose Redis is unreachable. ioredis retries forever and keeps commands
 * (QUIT included) in its offline queue until Redis answers, BullMQ's `close()` waits for its
 * blocking connection, and Nest awaits each shutdown hook in turn: measured on a worker whose
 * Redis had been down for 40 s, SIGTERM was ignored for good. Two things fix that: closing
 * without waiting for a Redis that cannot answer ({@link endRedis}), and a hard deadline on
 * the whole sequence ({@link armShutdownDeadline}).
 */

/** After the grace period, how long the rest of the shutdown may take (cancel jobs, write usage, close). */
export const SHUTDOWN_MARGIN_MS = 1_000;
/** After the connections were force-closed, how long Nest's hooks get before `process.exit`. */
export const FORCED_EXIT_AFTER_MS = 500;

/** The connection statuses ioredis reports for a socket that cannot carry a command now. */
const DOWN = new Set(['reconnecting', 'connecting', 'close', 'wait']);

/** The ioredis calls {@link endRedis} uses (BullMQ's client proxy has them too). */
export interface EndableRedis {
  readonly status: string;
  disconnect(): void;
  connect(): Promise<unknown>;
}

/**
 * Ends an ioredis client now, failing its pending commands ("Connection is closed") so that
 * whatever awaits them (a QUIT, BullMQ's close) moves on. `disconnect()` alone is not
 * enough for a client between two reconnect attempts: it cancels the retry timer and leaves
 * the client 'reconnecting' for ever, its offline queue pending (BullMQ #4585). One more
 * connect attempt, made after `disconnect()` marked the client as closing, fails or closes
 * and takes ioredis through its normal end: status 'end', queue flushed.
 */
export function endRedis(client: EndableRedis): void {
  if (client.status === 'end') {
    return;
  }
  const wasReconnecting = client.status === 'reconnecting';
  client.disconnect();
  if (wasReconnecting && client.status === 'reconnecting') {
    client.connect().catch(() => undefined);
  }
}

/** True when the client can carry a command now. */
export function redisUsable(client: { readonly status: string }): boolean {
  return !DOWN.has(client.status) && client.status !== 'end';
}

/** What the deadline force-closes: an ioredis client, or anything that knows how to end its own. */
export type ClosableConnection = EndableRedis | { forceClose(): void | Promise<void> };

const open = new Set<ClosableConnection>();

/** Makes `connection` one of those the shutdown deadline force-closes. Returns it. */
export function trackConnection<T extends ClosableConnection>(connection: T): T {
  open.add(connection);
  return connection;
}

/** Force-closes every tracked connection (best effort: one that throws does not stop the others). */
export async function forceCloseConnections(): Promise<number> {
  const all = [...open];
  open.clear();
  await Promise.all(
    all.map(async (c) => {
      try {
        if ('forceClose' in c) {
          await c.forceClose();
        } else {
          endRedis(c);
        }
      } catch {
        // Shutting down: a connection that cannot even be closed is left to process exit.
      }
    }),
  );
  return all.length;
}

/** A BullMQ RedisConnection: `_client` is its ioredis client, set before the first connect. */
interface BullmqConnection {
  _client?: EndableRedis;
}

/** What a BullMQ Queue or Worker exposes to reach its ioredis clients. */
interface BullmqConnections {
  getBackend(): {
    client: Promise<EndableRedis>;
    blockingClient?: Promise<EndableRedis>;
    /** BullMQ's RedisConnection objects (typed as unknown: `_client` is protected there). */
    connection?: unknown;
    blockingConnection?: unknown;
  };
}

/**
 * Ends a BullMQ Queue's or Worker's connections without waiting for Redis: its own
 * `disconnect()` awaits an 'end' event that a reconnecting client never emits. The client
 * promises settle only once a connection was first set up, so for a process that booted
 * without Redis the clients are taken from BullMQ's connection objects directly (internal,
 * hence only as a fallback): otherwise they would retry, and hold the shutdown, forever.
 */
export async function endBullmq(target: BullmqConnections, timeoutMs = 200): Promise<void> {
  const backend = target.getBackend();
  const connections = [
    { pending: backend.client, raw: backend.connection },
    { pending: backend.blockingClient, raw: backend.blockingConnection },
  ];
  await Promise.all(
    connections.map(async ({ pending, raw }) => {
      if (pending === undefined) {
        return;
      }
      const client = await Promise.race([pending.catch(() => undefined), sleep(timeoutMs)]);
      const target = client ?? (raw as BullmqConnection | undefined)?._client;
      if (target !== undefined) {
        endRedis(target);
      }
    }),
  );
}

/** Tracks a BullMQ Queue or Worker for the shutdown deadline. */
export function trackBullmq(target: BullmqConnections): void {
  trackConnection({ forceClose: () => endBullmq(target) });
}

export function sleep(ms: number): Promise<undefined> {
  return new Promise((resolve) => setTimeout(() => resolve(undefined), ms));
}

export interface ShutdownDeadlineOptions {
  /** AQUEDUCT_SHUTDOWN_GRACE_MS: what in-flight work may take; the deadline adds {@link SHUTDOWN_MARGIN_MS}. */
  graceMs: number;
  /** Injected by tests; defaults to `process.exit`. */
  exit?: (code: number) => void;
}

/**
 * Arms, on the first SIGTERM or SIGINT, a deadline on the whole shutdown that Nest's hooks
 * run (`app.enableShutdownHooks()` still does the orderly part). At `graceMs` +
 * {@link SHUTDOWN_MARGIN_MS} every tracked Redis connection is force-closed, which lets hooks
 * stuck on a dead Redis finish; {@link FORCED_EXIT_AFTER_MS} later the process exits with
 * code 1 and a JSON line saying why. The timers are unref'd: they never keep a process alive
 * that has finished its shutdown.
 */
export function armShutdownDeadline(opts: ShutdownDeadlineOptions): void {
  const logger = lazyLogger('Shutdown');
  const exit = opts.exit ?? ((code: number) => process.exit(code));
  const deadlineMs = opts.graceMs + SHUTDOWN_MARGIN_MS;
  let armed = false;
  const arm = (signal: NodeJS.Signals) => {
    if (armed) {
      return;
    }
    armed = true;
    const startedAt = Date.now();
    logger.log({ msg: `${signal}: shutting down within ${deadlineMs} ms`, signal, deadline_ms: deadlineMs });
    setTimeout(() => {
      const openCount = open.size;
      logger.warn({
        msg: `shutdown not finished ${deadlineMs} ms after ${signal}: force-closing ${openCount} Redis connection(s)`,
        signal,
        elapsed_ms: Date.now() - startedAt,
      });
      void forceCloseConnections();
      setTimeout(() => {
        logger.error({
          msg: `shutdown still not finished ${Date.now() - startedAt} ms after ${signal}, Redis connections closed: exiting now`,
          signal,
          elapsed_ms: Date.now() - startedAt,
        });
        exit(1);
      }, FORCED_EXIT_AFTER_MS).unref();
    }, deadlineMs).unref();
  };
  // `once`: Nest re-raises the signal when its hooks are done, and that must end the process.
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    process.once(signal, arm);
  }
}
