import { AppConfig, Clock, CONTROL_CLIENT, type WorkerHeartbeat } from '@app/common';
import { Inject, Injectable, Logger, type OnApplicationBootstrap, type OnApplicationShutdown } from '@nestjs/common';
import type { ClientRedis } from '@nestjs/microservices';
import type { RedisClient } from '@app/common';
import { InjectPublisher } from '../tokens';
import { WorkerIdentity } from '../worker-identity';
import { CancellationRegistry } from './cancellation.registry';

/**
 * Announces this worker: a heartbeat event on the control transport (gateways keep the
 * live set in memory) and a score in the workers ZSET (so a gateway that boots later
 * sees this worker without waiting a beat).
 */
@Injectable()
export class HeartbeatService implements OnApplicationBootstrap, OnApplicationShutdown {
  private readonly logger = new Logger(HeartbeatService.name);
  private timer?: NodeJS.Timeout;
  draining = false;

  constructor(
    private readonly config: AppConfig,
    private readonly clock: Clock,
    private readonly identity: WorkerIdentity,
    private readonly jobs: CancellationRegistry,
    @Inject(CONTROL_CLIENT) private readonly client: ClientRedis,
    @InjectPublisher() private readonly redis: RedisClient,
  ) {}

  onApplicationBootstrap(): void {
    this.beat();
    this.timer = setInterval(() => this.beat(), this.config.env.AQUEDUCT_HEARTBEAT_MS);
  }

  /** Tells gateways at once that this worker takes no more work. */
  async drain(): Promise<void> {
    this.draining = true;
    clearInterval(this.timer);
    this.beat();
    await this.redis.zrem(this.config.names.workers, this.identity.id).catch(() => 0);
  }

  async onApplicationShutdown(): Promise<void> {
    if (!this.draining) {
      await this.drain();
    }
    await this.client.close();
  }

  private beat(): void {
    const beat: WorkerHeartbeat = {
      workerId: this.identity.id,
      active: this.jobs.activeCount,
      concurrency: this.config.env.WORKER_CONCURRENCY,
      draining: this.draining,
    };
    this.client.emit(this.config.names.control.heartbeat, beat).subscribe({
      error: (err: Error) => this.logger.warn(`heartbeat not sent: ${err.message}`),
    });
    if (!this.draining) {
      const now = this.clock.now();
      // Prune workers that died without deregistering, so the set stays small.
      this.redis
        .multi()
        .zadd(this.config.names.workers, now, this.identity.id)
        .zremrangebyscore(this.config.names.workers, '-inf', now - 60_000)
        .exec()
        .catch(() => null);
    }
  }
}
