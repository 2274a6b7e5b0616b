import { ClientRedis, type RedisStatus, ServerRedis } from '@nestjs/microservices';
import { Cluster } from 'ioredis';
import { EMPTY, type Observable } from 'rxjs';
import { ConnectionStateLog } from './connection-state-log';
import { closeRedis, clusterOptions, clusterSeeds, type RedisClient, type RedisTarget } from './redis-factory';
import { parseRedisUrl } from './redis-url';
import { trackConnection } from './shutdown';

/**
 * The control plane (cancel, drain, heartbeats) rides on the @nestjs/microservices Redis
 * transport. Its defaults give up after the first connection loss (`retryAttempts: 0`);
 * a control plane must survive Redis restarts, so retry forever, once a second. On a
 * cluster the endpoint is unused (the clients are Clusters, see {@link transportClient}).
 */
function transportOptions(target: RedisTarget) {
  const first = target.REDIS_URL.split(',')[0] ?? target.REDIS_URL;
  return { ...parseRedisUrl(first.trim()), retryAttempts: Number.MAX_SAFE_INTEGER, retryDelay: 1_000 };
}

/**
 * The transport's own client on one Redis; on a cluster, a lazy Cluster with the transport's
 * retry policy (which stops once the transport is closed). Its PUBLISH reaches every node's
 * subscribers: a cluster broadcasts classic pub/sub, so control messages arrive wherever the
 * other side's subscriber connection landed.
 */
async function transportClient(
  target: RedisTarget,
  own: () => Promise<RedisClient>,
  retryStrategy: (times: number) => number | void | null,
): Promise<RedisClient> {
  if (!target.AQUEDUCT_REDIS_CLUSTER) {
    return trackConnection(await own());
  }
  const options = clusterOptions(target.REDIS_URL, 'subscriber');
  return trackConnection(
    new Cluster(clusterSeeds(target.REDIS_URL), { ...options, lazyConnect: true, clusterRetryStrategy: retryStrategy }),
  );
}

/** Closes the transport's pub/sub pair, whichever of the two exists (the client connects lazily). */
async function closeAll(...clients: (RedisClient | null | undefined)[]): Promise<void> {
  await Promise.all(clients.filter((c): c is RedisClient => c != null).map((c) => closeRedis(c)));
}

/** Resolves when the client is first ready (never, if it never is: then nothing is waiting on it but a callback). */
function firstReady(client: RedisClient): Promise<void> {
  return client.status === 'ready'
    ? Promise.resolve()
    : new Promise((resolve) => client.once('ready', () => resolve()));
}

/** Both ends of the transport log their four connections as one role. */
const CONTROL_ROLE = 'control';

/** The events the overridden listeners need (the transport types its clients as `any`). */
type TransportClient = Pick<RedisClient, 'on'>;

/**
 * The transport's server, with its connection logging routed through the control role's
 * {@link ConnectionStateLog} (Nest's own logs every retry twice, an error with its stack and
 * "Reconnecting to Redis...", and "Connected" on every reconnect), and a `close()` that does
 * not wait for a Redis that cannot answer.
 */
export class ControlServer extends ServerRedis {
  private readonly connection = ConnectionStateLog.for(CONTROL_ROLE);

  constructor(private readonly target: RedisTarget) {
    super(transportOptions(target));
  }

  override async createRedisClient(): Promise<RedisClient> {
    return transportClient(
      this.target,
      async () => (await super.createRedisClient()) as RedisClient,
      (times) => this.createRetryStrategy(times),
    );
  }

  override registerErrorListener(client: TransportClient): void {
    client.on('error', (err: Error) => this.connection.error(err, client));
  }

  /**
   * Nest's start() connects both clients and fails listen() (so the whole boot) when Redis
   * is unreachable at that moment, and never subscribes afterwards. Here listen() returns at
   * once and the subscriptions are made when both clients are first ready (ioredis
   * re-subscribes by itself after later reconnects): a process booted without Redis gets
   * its control plane as soon as Redis answers.
   */
  override start(callback?: () => void): void {
    const sub = this.subClient as RedisClient;
    const pub = this.pubClient as RedisClient;
    void Promise.all([firstReady(sub), firstReady(pub)]).then(() => {
      if (!this.isManuallyClosed) {
        this.bindEvents(sub, pub);
      }
    });
    // The clients are lazy; a failed first attempt leaves them retrying (retryAttempts above).
    sub.connect().catch(() => undefined);
    pub.connect().catch(() => undefined);
    callback?.();
  }

  override registerReconnectListener(client: TransportClient): void {
    client.on('reconnecting', () => {
      if (!this.isManuallyClosed) {
        this._status$.next('reconnecting' as RedisStatus);
      }
    });
  }

  override registerReadyListener(client: TransportClient): void {
    client.on('ready', () => {
      this._status$.next('connected' as RedisStatus);
      this.wasInitialConnectionSuccessful = true;
      this.connection.ready(client);
    });
  }

  override async close(): Promise<void> {
    this.isManuallyClosed = true;
    await closeAll(this.pubClient as RedisClient | null | undefined, this.subClient as RedisClient | null | undefined);
    this.pendingEventListeners = [];
  }
}

/**
 * The transport's client, logging like {@link ControlServer}. While its Redis is unreachable
 * an event is dropped at once instead of failing: control events are at-most-once by design
 * (a cancel also leaves a flag key, heartbeats repeat), the outage is already in the log, and
 * the callers' error handlers would otherwise log each dropped heartbeat (`droppedWhileDown`
 * counts them).
 */
export class ControlClient extends ClientRedis {
  private readonly connection = ConnectionStateLog.for(CONTROL_ROLE);
  /** Connections of this client that are between a loss and the next 'ready'. */
  private readonly down = new Set<TransportClient>();
  /** Events dropped because Redis was unreachable (for metrics and tests). */
  droppedWhileDown = 0;

  constructor(private readonly target: RedisTarget) {
    super(transportOptions(target));
  }

  override async createClient(): Promise<RedisClient> {
    return transportClient(
      this.target,
      async () => (await super.createClient()) as RedisClient,
      (times) => this.createRetryStrategy(times),
    );
  }

  override emit<TResult = unknown, TInput = unknown>(pattern: unknown, data: TInput): Observable<TResult> {
    if (this.down.size > 0) {
      this.droppedWhileDown += 1;
      return EMPTY;
    }
    return super.emit<TResult, TInput>(pattern, data);
  }

  override registerErrorListener(client: TransportClient): void {
    client.on('error', (err: Error) => {
      this.down.add(client);
      this.connection.error(err, client);
    });
  }

  override registerReconnectListener(client: TransportClient): void {
    // What Nest's listener does, without its log line: later connect() calls fail until 'ready'.
    client.on('reconnecting', () => {
      if (this.isManuallyClosed || !this.isCurrent(client)) {
        return;
      }
      this.down.add(client);
      this.connectionPromise = Promise.reject(new Error('Connection lost. Trying to reconnect...'));
      this.connectionPromise.catch(() => undefined);
      this._status$.next('reconnecting' as RedisStatus);
    });
  }

  override registerReadyListener(client: TransportClient): void {
    // Nest's listener, without its "Connected to Redis" line on every reconnect.
    client.on('ready', () => {
      if (!this.isCurrent(client)) {
        return;
      }
      this.down.delete(client);
      this.connection.ready(client);
      this.connectionPromise = Promise.resolve();
      this._status$.next('connected' as RedisStatus);
      if (!this.wasInitialConnectionSuccessful) {
        this.wasInitialConnectionSuccessful = true;
        (this.subClient as RedisClient).on(
          this.options.returnBuffers ? 'messageBuffer' : 'message',
          this.createResponseCallback() as (channel: string, message: string) => void,
        );
      }
    });
  }

  override registerEndListener(client: TransportClient): void {
    // An ended client is gone (Nest replaces the pair): it no longer holds events back.
    client.on('end', () => {
      this.down.delete(client);
      this.connection.forget(client);
    });
    super.registerEndListener(client);
  }

  override async close(): Promise<void> {
    this.isManuallyClosed = true;
    await closeAll(this.pubClient as RedisClient | null | undefined, this.subClient as RedisClient | null | undefined);
    // Nothing left for the base class to QUIT; it resets its state.
    this.pubClient = this.subClient = null;
    this.down.clear();
    await super.close();
  }

  private isCurrent(client: TransportClient): boolean {
    return client === this.pubClient || client === this.subClient;
  }
}

export function createControlServer(target: RedisTarget): ServerRedis {
  return new ControlServer(target);
}

export function createControlClient(target: RedisTarget): ClientRedis {
  return new ControlClient(target);
}
