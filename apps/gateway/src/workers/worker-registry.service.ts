import { AppConfig, Clock, CONTROL_SERVER, whenReady, type WorkerHeartbeat } from '@app/common';
import { Inject, Injectable, Logger, type OnApplicationShutdown, type OnModuleInit } from '@nestjs/common';
import type { ServerRedis } from '@nestjs/microservices';
import type { RedisClient } from '@app/common';
import { InjectRedis } from '../redis/redis.tokens';

/** How often the boot-time seed of live workers is retried while Redis does not answer. */
const SEED_RETRY_MS = 1_000;

/**
 * Which workers are alive, from their heartbeats on the control transport. Kept in
 * memory so that admission and /ready cost no Redis round trip; seeded at boot from
 * the workers' heartbeat set so a fresh gateway does not think it is alone.
 */
@Injectable()
export class WorkerRegistryService implements OnModuleInit, OnApplicationShutdown {
  private readonly logger = new Logger(WorkerRegistryService.name);
  private readonly lastSeen = new Map<string, { at: number; beat: WorkerHeartbeat }>();
  private stopped = false;

  constructor(
    private readonly config: AppConfig,
    private readonly clock: Clock,
    @Inject(CONTROL_SERVER) private readonly server: ServerRedis,
    @InjectRedis() private readonly redis: RedisClient,
  ) {}

  /** Does not wait for Redis: the seed runs in the background until it succeeds (or shutdown). */
  onModuleInit(): void {
    this.server.addHandler(
      this.config.names.control.heartbeat,
      (beat: WorkerHeartbeat) => {
        this.record(beat);
        return Promise.resolve();
      },
      true,
    );
    void this.seedFromRedis();
  }

  onApplicationShutdown(): void {
    this.stopped = true;
  }

  /** Workers heard from within three heartbeat intervals. */
  alive(): WorkerHeartbeat[] {
    const horizon = this.clock.now() - 3 * this.config.env.AQUEDUCT_HEARTBEAT_MS;
    const live: WorkerHeartbeat[] = [];
    for (const [id, entry] of this.lastSeen) {
      if (entry.at >= horizon) {
        live.push(entry.beat);
      } else {
        this.lastSeen.delete(id);
      }
    }
    return live;
  }

  private record(beat: WorkerHeartbeat): void {
    if (beat.draining) {
      this.lastSeen.delete(beat.workerId);
      return;
    }
    this.lastSeen.set(beat.workerId, { at: this.clock.now(), beat });
  }

  /**
   * Reads the workers' heartbeat set once Redis answers: at boot usually at once, after an
   * outage at boot as soon as Redis is back (the live heartbeats would find the workers
   * within a beat anyway; the seed makes /ready right without waiting for one).
   */
  private async seedFromRedis(): Promise<void> {
    for (let attempt = 0; !this.stopped; attempt++) {
      // The command connection has no offline queue: wait for it rather than fail at once.
      await whenReady(this.redis, SEED_RETRY_MS);
      if (this.stopped) {
        return;
      }
      try {
        const horizon = this.clock.now() - 3 * this.config.env.AQUEDUCT_HEARTBEAT_MS;
        const ids = await this.redis.zrangebyscore(this.config.names.workers, horizon, '+inf');
        for (const workerId of ids) {
          if (!this.lastSeen.has(workerId)) {
            this.record({ workerId, active: 0, concurrency: 0, draining: false });
          }
        }
        return;
      } catch (err) {
        if (attempt === 0) {
          this.logger.warn(
            `could not read worker heartbeats yet (${(err as Error).message}); retrying until Redis answers`,
          );
        }
        await new Promise((r) => setTimeout(r, SEED_RETRY_MS).unref());
      }
    }
  }
}
