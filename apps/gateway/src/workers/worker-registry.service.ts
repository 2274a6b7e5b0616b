import { AppConfig, Clock, whenReady, type WorkerHeartbeat } from '@app/common';
import { Inject, Injectable, Logger, type OnModuleInit } from '@nestjs/common';
import type { ServerRedis } from '@nestjs/microservices';
import type Redis from 'ioredis';
import { CONTROL_SERVER } from '../control/control.tokens';
import { InjectRedis } from '../redis/redis.tokens';

/**
 * Which workers are alive, from their heartbeats on the control transport. Kept in
 * memory so that admission and /ready cost no Redis round trip; seeded at boot from
 * the workers' heartbeat set so a fresh gateway does not think it is alone.
 */
@Injectable()
export class WorkerRegistry implements OnModuleInit {
  private readonly logger = new Logger(WorkerRegistry.name);
  private readonly lastSeen = new Map<string, { at: number; beat: WorkerHeartbeat }>();

  constructor(
    private readonly config: AppConfig,
    private readonly clock: Clock,
    @Inject(CONTROL_SERVER) private readonly server: ServerRedis,
    @InjectRedis() private readonly redis: Redis,
  ) {}

  async onModuleInit(): Promise<void> {
    this.server.addHandler(
      this.config.names.control.heartbeat,
      (beat: WorkerHeartbeat) => {
        this.record(beat);
        return Promise.resolve();
      },
      true,
    );
    await this.seedFromRedis();
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

  private async seedFromRedis(): Promise<void> {
    // The command connection has no offline queue: give it a moment to connect at boot.
    await whenReady(this.redis, 3_000);
    try {
      const horizon = this.clock.now() - 3 * this.config.env.AQUEDUCT_HEARTBEAT_MS;
      const ids = await this.redis.zrangebyscore(this.config.names.workers, horizon, '+inf');
      for (const workerId of ids) {
        this.record({ workerId, active: 0, concurrency: 0, draining: false });
      }
    } catch (err) {
      this.logger.warn(`could not read worker heartbeats at boot: ${(err as Error).message}`);
    }
  }
}
