import {
  AppConfig,
  Clock,
  closeRedis,
  COMPLETIONS_QUEUE,
  ConfigModule,
  createControlClient,
  createControlServer,
  createRedis,
  parseRedisUrl,
} from '@app/common';
import { BullModule } from '@nestjs/bullmq';
import { Inject, Module, type OnApplicationShutdown } from '@nestjs/common';
import type Redis from 'ioredis';
import { BackendRegistry } from './backends/backend-registry';
import { CompletionRunner } from './completions/completion-runner.service';
import { CompletionProcessor } from './completions/completion.processor';
import { CancellationRegistry } from './control/cancellation.registry';
import { HeartbeatService } from './control/heartbeat.service';
import { CONTROL_CLIENT, CONTROL_SERVER, REDIS_PUBLISHER } from './tokens';
import { WorkerUsage } from './usage/worker-usage.service';
import { WorkerIdentity } from './worker-identity';

@Module({
  imports: [
    ConfigModule,
    BullModule.forRootAsync({
      inject: [AppConfig],
      useFactory: (config: AppConfig) => ({
        prefix: config.names.bullPrefix,
        // Workers block on Redis: BullMQ requires maxRetriesPerRequest: null.
        connection: { ...parseRedisUrl(config.env.REDIS_URL), maxRetriesPerRequest: null },
      }),
    }),
    BullModule.registerQueue({ name: COMPLETIONS_QUEUE }),
  ],
  providers: [
    Clock,
    WorkerIdentity,
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
      provide: BackendRegistry,
      inject: [AppConfig],
      useFactory: (config: AppConfig) => new BackendRegistry(config.env.AQUEDUCT_IDLE_TIMEOUT_MS),
    },
    CancellationRegistry,
    HeartbeatService,
    WorkerUsage,
    CompletionRunner,
    CompletionProcessor,
  ],
})
export class WorkerModule implements OnApplicationShutdown {
  constructor(@Inject(REDIS_PUBLISHER) private readonly redis: Redis) {}

  async onApplicationShutdown(): Promise<void> {
    await closeRedis(this.redis);
  }
}
