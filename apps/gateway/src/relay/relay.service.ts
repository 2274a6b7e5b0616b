import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { AppConfig, Clock, closeRedis, createRedis, type RelayMessage } from '@app/common';
import { Injectable, Logger, type OnApplicationShutdown, type OnModuleInit } from '@nestjs/common';
import type Redis from 'ioredis';
import { type RelayListener, RelaySession } from './relay-session';

/**
 * Receives every relay message for this gateway instance on ONE pub/sub inbox channel,
 * subscribed at boot. A per-request SUBSCRIBE would cost a round trip per request and
 * race the worker's first publish; with the inbox, the gateway is listening before any
 * job that names it can exist.
 */
@Injectable()
export class RelayService implements OnModuleInit, OnApplicationShutdown {
  readonly gatewayId = `gw-${hostname()}-${process.pid}-${randomBytes(3).toString('hex')}`;
  readonly inbox: string;
  private readonly logger = new Logger(RelayService.name);
  private readonly sessions = new Map<string, RelaySession>();
  private subscriber?: Redis;
  private idleTimer?: NodeJS.Timeout;

  constructor(
    private readonly config: AppConfig,
    private readonly clock: Clock,
  ) {
    this.inbox = config.names.gatewayInbox(this.gatewayId);
  }

  async onModuleInit(): Promise<void> {
    const sub = createRedis(this.config.env.REDIS_URL, 'subscriber', `${this.gatewayId}:inbox`);
    this.subscriber = sub;
    sub.on('message', (_channel: string, raw: string) => this.dispatch(raw));
    await sub.subscribe(this.inbox);
    const idleMs = this.config.env.AQUEDUCT_IDLE_TIMEOUT_MS;
    this.idleTimer = setInterval(() => this.sweepIdle(idleMs), Math.min(1_000, idleMs / 4));
    this.idleTimer.unref();
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
  open(rid: string, listener: RelayListener): RelaySession {
    const session = new RelaySession(rid, listener);
    this.sessions.set(rid, session);
    return session;
  }

  close(rid: string): void {
    this.sessions.delete(rid);
  }

  get activeCount(): number {
    return this.sessions.size;
  }

  private dispatch(raw: string): void {
    let msg: RelayMessage;
    try {
      msg = JSON.parse(raw) as RelayMessage;
    } catch {
      this.logger.warn('dropped an unparseable relay message');
      return;
    }
    this.sessions.get(msg.rid)?.accept(msg, this.clock.now());
  }

  /** One timer for all requests: a started job whose worker fell silent is failed. */
  private sweepIdle(idleMs: number): void {
    const now = this.clock.now();
    for (const s of this.sessions.values()) {
      if (s.started && !s.isClosed && now - s.lastActivity > idleMs) {
        s.fail(502, 'The worker stopped responding (no data for too long). Please retry.', 'worker_timeout');
      }
    }
  }
}
