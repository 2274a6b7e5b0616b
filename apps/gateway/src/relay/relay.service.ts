import { randomBytes } from 'node:crypto';
import type { Server } from 'node:http';
import { hostname } from 'node:os';
import {
  AppConfig,
  Clock,
  closeRedis,
  createRedis,
  inboxDrained,
  type RelayMessage,
  subscribeInbox,
} from '@app/common';
import {
  type BeforeApplicationShutdown,
  Injectable,
  Logger,
  type OnApplicationShutdown,
  type OnModuleInit,
} from '@nestjs/common';
import { HttpAdapterHost } from '@nestjs/core';
import type { RedisClient } from '@app/common';
import { GatewayDrain } from '../health/gateway-drain';
import { InjectRedis } from '../redis/redis.tokens';
import { WorkerRegistryService } from '../workers/worker-registry.service';
import { AttemptOwnership } from './attempt-ownership';
import { type RelayListener, RelaySession } from './relay-session';

/**
 * A session that ended (terminal message or failure) is normally removed by `close()` when
 * its response closes; past this it is dropped anyway, so that no path can leave one behind
 * for shutdown to wait on.
 */
const CLOSED_SESSION_TTL_MS = 60_000;
/** After the drain, how long connections still busy with other requests delay the server's close. */
const CLOSE_CONNECTIONS_AFTER_MS = 500;

/**
 * Receives every relay message for this gateway instance on ONE pub/sub inbox channel,
 * subscribed at boot. A per-request SUBSCRIBE would cost a round trip per request and
 * race the worker's first publish; with the inbox, the gateway is listening before any
 * job that names it can exist. Plain ioredis rather than the microservices transport:
 * see RelayPublisher for the measurement.
 */
@Injectable()
export class RelayService implements OnModuleInit, BeforeApplicationShutdown, OnApplicationShutdown {
  readonly gatewayId = `gw-${hostname()}-${process.pid}-${randomBytes(3).toString('hex')}`;
  readonly inbox: string;
  private readonly logger = new Logger(RelayService.name);
  private readonly sessions = new Map<string, RelaySession>();
  private subscriber?: RedisClient;
  private idleTimer?: NodeJS.Timeout;
  private readonly ownership: AttemptOwnership;
  /** One ownership check at a time: a slow Redis must not stack them up sweep after sweep. */
  private checking = false;
  /** The same for the probe of unheard attempts. */
  private probing = false;
  /** True once the inbox subscription is in place: before that no job may name this gateway. */
  private subscribed = false;

  constructor(
    private readonly config: AppConfig,
    private readonly clock: Clock,
    private readonly workers: WorkerRegistryService,
    private readonly adapterHost: HttpAdapterHost,
    private readonly drain: GatewayDrain,
    @InjectRedis() redis: RedisClient,
  ) {
    this.inbox = config.names.gatewayInbox(this.gatewayId);
    this.ownership = new AttemptOwnership(redis, config.names);
  }

  /**
   * Does not wait for Redis: the subscription is made in the background (ioredis queues it
   * until connected, and re-subscribes by itself after every reconnect), so a gateway
   * booted without Redis listens at once; until the inbox is subscribed it admits nothing.
   */
  onModuleInit(): void {
    const sub = createRedis(this.config.env, 'subscriber', `${this.gatewayId}:inbox`);
    this.subscriber = sub;
    subscribeInbox(sub, this.inbox, (raw) => this.dispatch(raw)).then(
      () => (this.subscribed = true),
      () => undefined, // closed before Redis ever answered: shutting down
    );
    const idleMs = this.config.env.AQUEDUCT_IDLE_TIMEOUT_MS;
    this.idleTimer = setInterval(() => this.sweepIdle(idleMs), Math.min(1_000, idleMs / 4));
    this.idleTimer.unref();
  }

  /** Set on SIGTERM: new completions are refused while open ones finish. */
  get draining(): boolean {
    return this.drain.draining;
  }

  /** Whether relay messages can reach this gateway now (inbox subscribed, its connection up). */
  get listening(): boolean {
    return this.subscribed && this.subscriber?.status === 'ready';
  }

  /**
   * SIGTERM: keep the port open while open requests finish within the grace period (new
   * ones get 503 from the drain), fail the rest with a retryable error, then let idle
   * keep-alive connections go so that closing the server does not wait for them.
   */
  async beforeApplicationShutdown(): Promise<void> {
    this.drain.begin();
    const until = this.clock.now() + this.config.env.AQUEDUCT_SHUTDOWN_GRACE_MS;
    while (this.sessions.size > 0 && this.clock.now() < until) {
      this.dropStale(this.clock.now());
      await new Promise((r) => setTimeout(r, 50));
    }
    for (const s of this.sessions.values()) {
      s.fail(503, 'The gateway is shutting down. Please retry.', 'gateway_shutdown');
    }
    await new Promise((r) => setTimeout(r, 50)); // let the error frames flush
    const server = this.adapterHost.httpAdapter?.getHttpServer() as Server | undefined;
    server?.closeIdleConnections();
    // Anything still open (a request that is not a completion) may hold the close up only briefly.
    setTimeout(() => server?.closeAllConnections(), CLOSE_CONNECTIONS_AFTER_MS).unref();
  }

  async onApplicationShutdown(): Promise<void> {
    clearInterval(this.idleTimer);
    for (const s of this.sessions.values()) {
      s.fail(503, 'The gateway is shutting down. Please retry.');
    }
    if (this.subscriber !== undefined) {
      await closeRedis(this.subscriber);
    }
  }

  /** Registers a request before its job is enqueued, so no message can precede it. */
  open(rid: string, model: string, listener: RelayListener, onWorkerLost?: () => boolean): RelaySession {
    const session = new RelaySession(rid, model, listener, onWorkerLost);
    this.sessions.set(rid, session);
    return session;
  }

  close(rid: string): void {
    this.sessions.delete(rid);
  }

  get activeCount(): number {
    return this.sessions.size;
  }

  /** One relay message, or a worker's batch of them for this inbox (a JSON array, see RelayOutbox). */
  private dispatch(raw: string): void {
    let parsed: RelayMessage | RelayMessage[];
    try {
      parsed = JSON.parse(raw) as RelayMessage | RelayMessage[];
    } catch {
      this.logger.warn('dropped an unparseable relay message');
      return;
    }
    const now = this.clock.now();
    if (Array.isArray(parsed)) {
      for (const msg of parsed) {
        this.sessions.get(msg.rid)?.accept(msg, now);
      }
    } else {
      this.sessions.get(parsed.rid)?.accept(parsed, now);
    }
  }

  /**
   * One timer for all requests. A started attempt is lost when its relay fell silent for
   * the idle timeout (a real stall: a live worker relays a heartbeat well within it).
   * Missing control-plane heartbeats alone prove nothing: they lapse in a pub/sub blip
   * and stop on purpose when a worker drains while it finishes its jobs. So a session
   * whose worker looks gone is only a suspect; it is lost (sooner than the idle timeout)
   * once the attempt's job lock is gone too. Before any output reached the client a lost
   * attempt is run again once; after that the client gets an error.
   */
  private sweepIdle(idleMs: number): void {
    const now = this.clock.now();
    const alive = new Set(this.workers.alive().map((w) => w.workerId));
    const beatMs = this.config.env.AQUEDUCT_HEARTBEAT_MS;
    const suspects: RelaySession[] = [];
    const unheard: RelaySession[] = [];
    this.dropStale(now);
    for (const s of this.sessions.values()) {
      if (s.probeDue(now)) {
        unheard.push(s);
      }
      if (s.isClosed || !s.started) {
        continue;
      }
      const silent = now - s.lastActivity;
      if (silent > idleMs) {
        this.lost(s);
      } else if (s.workerId !== undefined && !alive.has(s.workerId) && silent > beatMs) {
        suspects.push(s);
      }
    }
    if (suspects.length > 0 && !this.checking) {
      void this.checkOwnership(suspects);
    }
    if (unheard.length > 0 && !this.probing) {
      void this.probeUnheard(unheard);
    }
  }

  /**
   * Attempts that were enqueued but that no worker has been heard from: normally jobs
   * waiting for capacity. Without this look, a job that Redis lost in a failover (the
   * master acknowledged the add and died before its replica had it), or one whose every
   * message was lost on the way, would hold its client until the queue deadline and past
   * it: the idle timeout only watches started attempts. A vanished job is taken back by its
   * request (run again, or a clean 503); one that ran unheard is failed like a lost worker,
   * once the messages already pushed to the inbox are taken in (see checkOwnership).
   */
  private async probeUnheard(sessions: RelaySession[]): Promise<void> {
    this.probing = true;
    const attempts = sessions.map((s) => ({ session: s, rid: s.rid, att: s.attempt, model: s.model }));
    try {
      const found = await this.ownership.unheard(attempts);
      if (found.includes('ended') && this.subscriber !== undefined) {
        await inboxDrained(this.subscriber);
      }
      const now = this.clock.now();
      attempts.forEach(({ session: s, att }, i) => {
        // Heard from meanwhile, retried or ended: the look is out of date.
        if (s.isClosed || s.started || s.attempt !== att) {
          return;
        }
        s.probed(now);
        if (found[i] === 'vanished') {
          this.logger.warn(`request ${s.rid}: its queued job vanished from Redis before a worker took it`);
          s.onVanished?.();
        } else if (found[i] === 'ended') {
          this.logger.warn(`request ${s.rid}: its job ended without a message reaching this gateway`);
          s.fail(502, 'The response was lost on its way from the worker. Please retry.', 'relay_lost', now);
          s.onLost?.();
        }
      });
    } catch {
      // Redis cannot answer (a failover in progress): the next sweep looks again.
    } finally {
      this.probing = false;
    }
  }

  /**
   * Fails over or fails the suspects whose job lock is gone and that stayed silent; on a
   * Redis error, decides nothing. A lock also goes when its job ends, and the worker's last
   * messages, sent before that, may still be on their way here (a gateway busy taking in a
   * 40 MB result lags behind): re-running such a request would call the upstream twice. So
   * the messages Redis has already pushed to the inbox are taken in first (inboxDrained),
   * and a session that heard anything meanwhile is not lost.
   */
  private async checkOwnership(suspects: RelaySession[]): Promise<void> {
    this.checking = true;
    const attempts = suspects.map((s) => ({
      session: s,
      rid: s.rid,
      att: s.attempt,
      model: s.model,
      heard: s.lastActivity,
    }));
    try {
      const held = await this.ownership.held(attempts);
      if (held.includes(false) && this.subscriber !== undefined) {
        await inboxDrained(this.subscriber);
      }
      attempts.forEach((a, i) => {
        // The session may have moved on (a message, a retry, its end) while Redis answered.
        const s = a.session;
        if (held[i] === false && !s.isClosed && s.attempt === a.att && s.started && s.lastActivity === a.heard) {
          this.lost(s);
        }
      });
    } catch {
      // Redis is unreachable: the idle timeout still catches a real stall.
    } finally {
      this.checking = false;
    }
  }

  private lost(s: RelaySession): void {
    if (!s.hasOutput && s.onWorkerLost()) {
      this.logger.warn(`request ${s.rid}: worker ${s.workerId ?? '?'} lost before any output; running it again`);
      return;
    }
    const message = 'The worker stopped responding before the completion finished. Please retry.';
    if (!s.isClosed) {
      s.fail(502, message, 'worker_lost', this.clock.now());
      s.onLost?.();
    }
  }

  /** Drops sessions that ended long ago but were never closed (see CLOSED_SESSION_TTL_MS). */
  private dropStale(now: number): void {
    for (const [rid, s] of this.sessions) {
      if (s.isClosed && now - s.closedAt > CLOSED_SESSION_TTL_MS) {
        this.sessions.delete(rid);
      }
    }
  }
}
