import {
  AppConfig,
  AppLogger,
  Clock,
  closeRedis,
  COMPLETIONS_QUEUE,
  ConfigModule,
  createControlClient,
  createControlServer,
  createRedis,
  parseRedisUrl,
  reconnectDelay,
} from '@app/common';
import { BullModule } from '@nestjs/bullmq';
import { type DynamicModule, Inject, Module, type OnApplicationShutdown } from '@nestjs/common';
import type Redis from 'ioredis';
import { BackendRegistry } from './backends/backend-registry';
import { CompletionRunner } from './completions/completion-runner.service';
import { CompletionProcessor } from './completions/completion.processor';
import { CancellationRegistry } from './control/cancellation.registry';
import { HeartbeatService } from './control/heartbeat.service';
import { MeteredBackendRegistry } from './observability/metered-backends';
import { WorkerMetricsServer } from './observability/metrics-server';
import { WorkerMetrics } from './observability/worker-metrics';
import { CONTROL_CLIENT, CONTROL_SERVER, REDIS_PUBLISHER } from './tokens';
import { WorkerUsage } from './usage/worker-usage.service';
import { WorkerIdentity } from './worker-identity';

@Module({
  imports: [
    BullModule.forRootAsync({
      inject: [AppConfig],
      useFactory: (config: AppConfig) => ({
        prefix: config.names.bullPrefix,
        // Workers block on Redis: BullMQ requires maxRetriesPerRequest: null. Reconnect as
        // quickly as the other connections (BullMQ's default backs off to 20 s).
        connection: {
          ...parseRedisUrl(config.env.REDIS_URL),
          maxRetriesPerRequest: null,
          // No auto-pipelining here: ioredis builds a Pipeline per tick that copies every defined
          // script, and BullMQ defines dozens (measured: more CPU per request, not less).
          retryStrategy: reconnectDelay,
        },
      }),
    }),
    BullModule.registerQueue({ name: COMPLETIONS_QUEUE }),
  ],
  providers: [
    Clock,
    WorkerIdentity,
    WorkerMetrics,
    WorkerMetricsServer,
    {
      provide: REDIS_PUBLISHER,
      inject: [AppConfig, WorkerIdentity],
      useFactory: (config: AppConfig, id: WorkerIdentity) =>
        createRedis(config.env.REDIS_URL, 'command', `${id.id}:pub`),
    },
    {
      provide: CONTROL_SERVER,
      inject: [AppConfig],
      useFactory: (config: AppConfig) => createControlServer(config.env.REDIS_URL),
    },
    {
      provide: CONTROL_CLIENT,
      inject: [AppConfig],
      useFactory: (config: AppConfig) => createControlClient(config.env.REDIS_URL),
    },
    {
      // Every backend call that fails counts as an upstream error of its deployment.
      provide: BackendRegistry,
      inject: [AppConfig, WorkerMetrics],
      useFactory: (config: AppConfig, metrics: WorkerMetrics) =>
        new MeteredBackendRegistry(config.env.AQUEDUCT_IDLE_TIMEOUT_MS, metrics),
    },
    CancellationRegistry,
    HeartbeatService,
    WorkerUsage,
    CompletionRunner,
    CompletionProcessor,
  ],
})
export class WorkerModule implements OnApplicationShutdown {
  /** The configuration and logger are made by main.ts before Nest starts (see ConfigModule). */
  static forRoot(config: AppConfig, logger: AppLogger): DynamicModule {
    return { module: WorkerModule, imports: [ConfigModule.forRoot(config, logger)] };
  }

  constructor(@Inject(REDIS_PUBLISHER) private readonly redis: Redis) {}

  async onApplicationShutdown(): Promise<void> {
    await closeRedis(this.redis);
  }
}
