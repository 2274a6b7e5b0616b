import { ApiError } from '@app/common';
import { Controller, Get } from '@nestjs/common';
import type Redis from 'ioredis';
import { Public } from '../auth/public.decorator';
import { InjectRedis } from '../redis/redis.tokens';
import { WorkerRegistry } from '../workers/worker-registry.service';

@Controller()
@Public()
export class HealthController {
  constructor(
    @InjectRedis() private readonly redis: Redis,
    private readonly workers: WorkerRegistry,
  ) {}

  /** Liveness: the process serves HTTP. Touches nothing else on purpose. */
  @Get('health')
  health(): { status: 'ok' } {
    return { status: 'ok' };
  }

  /** Readiness: Redis answers and at least one worker is alive. */
  @Get('ready')
  async ready(): Promise<{ status: 'ready'; workers: number }> {
    try {
      await this.redis.ping();
    } catch {
      throw ApiError.server(503, 'Redis is not reachable.', 'redis_unavailable', 1_000);
    }
    const workers = this.workers.alive().length;
    if (workers === 0) {
      throw ApiError.server(503, 'No worker is alive.', 'no_workers', 2_000);
    }
    return { status: 'ready', workers };
  }
}
