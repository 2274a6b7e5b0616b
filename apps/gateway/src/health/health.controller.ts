import { ApiError, ModelQueues } from '@app/common';
import { Controller, Get, Header } from '@nestjs/common';
import type { RedisClient } from '@app/common';
import { Public } from '../auth/public.decorator';
import { GatewayDrain } from './gateway-drain';
import { InjectRedis } from '../redis/redis.tokens';
import { RelayService } from '../relay/relay.service';
import { WorkerRegistryService } from '../workers/worker-registry.service';

/** A probe must answer within its own timeout even when Redis hangs instead of refusing. */
const REDIS_TIMEOUT_MS = 1_000;

/**
 * Probes for Kubernetes and compose healthchecks. Both are plain GETs (HEAD works too)
 * without auth, answer JSON and are never cached.
 * - `/health` (liveness): 200 while the process serves HTTP; restarting would not fix
 *   anything it could check, so it checks nothing else.
 * - `/ready` (readiness): 200 when Redis answers on the connections a request needs (the
 *   command one for tokens and limits, the queue producer's, the relay inbox's subscription)
 *   and at least one worker is
 *   alive; 503 (with Retry-After) otherwise, and from the moment the gateway starts shutting
 *   down, so load balancers stop sending it new requests while in-flight ones finish.
 */
@Controller()
@Public()
export class HealthController {
  constructor(
    @InjectRedis() private readonly redis: RedisClient,
    private readonly queues: ModelQueues,
    private readonly workers: WorkerRegistryService,
    private readonly relay: RelayService,
    private readonly drain: GatewayDrain,
  ) {}

  @Get('health')
  @Header('cache-control', 'no-store')
  health(): { status: 'ok' } {
    return { status: 'ok' };
  }

  @Get('ready')
  @Header('cache-control', 'no-store')
  async ready(): Promise<{ status: 'ready'; workers: number }> {
    if (this.drain.draining) {
      throw ApiError.server(503, 'The gateway is shutting down.', 'shutting_down', 1_000);
    }
    const [command, queue] = await Promise.all([
      this.answers(this.redis.ping()),
      this.answers(this.queues.connection.ping()),
    ]);
    // The relay inbox too: a request admitted before it is subscribed would never hear back.
    if (!command || !queue || !this.relay.listening) {
      throw ApiError.server(503, 'Redis is not reachable.', 'redis_unavailable', 1_000);
    }
    const workers = this.workers.alive().length;
    if (workers === 0) {
      throw ApiError.server(503, 'No worker is alive.', 'no_workers', 2_000);
    }
    return { status: 'ready', workers };
  }

  private async answers(command: Promise<unknown>): Promise<boolean> {
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<false>((resolve) => (timer = setTimeout(() => resolve(false), REDIS_TIMEOUT_MS)));
    try {
      return await Promise.race([command.then(() => true as const), timeout]);
    } catch {
      return false;
    } finally {
      clearTimeout(timer);
    }
  }
}
