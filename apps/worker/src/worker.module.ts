import {
  AppConfig,
  AppLogger,
  Clock,
  closeRedis,
  ConfigModule,
  ControlModule,
  createRedis,
  QueueModule,
} from '@app/common';
import { type DynamicModule, Inject, Module, type OnApplicationShutdown } from '@nestjs/common';
import type { RedisClient } from '@app/common';
import { BackendRegistry } from './backends/backend.registry';
import { CancellationRegistry } from './control/cancellation.registry';
import { HeartbeatService } from './control/heartbeat.service';
import { DeploymentPicker } from './inference/deployment.picker';
import { InferenceProcessor } from './inference/inference.processor';
import { InferenceRunner } from './inference/inference.runner';
import { JobWatchdog } from './inference/job.watchdog';
import { RelayOutbox } from './inference/relay.outbox';
import { MeteredBackendRegistry } from './observability/metered-backend.registry';
import { WorkerMetricsServer } from './observability/worker-metrics.server';
import { WorkerMetrics } from './observability/worker-metrics';
import { REDIS_PUBLISHER } from './tokens';
import { WorkerUsageService } from './usage/worker-usage.service';
import { WorkerIdentity } from './worker-identity';

@Module({
  imports: [QueueModule.forRole('consumer'), ControlModule],
  providers: [
    Clock,
    WorkerIdentity,
    WorkerMetrics,
    WorkerMetricsServer,
    {
      provide: REDIS_PUBLISHER,
      inject: [AppConfig, WorkerIdentity],
      useFactory: (config: AppConfig, id: WorkerIdentity) => createRedis(config.env, 'command', `${id.id}:pub`),
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
    WorkerUsageService,
    DeploymentPicker,
    JobWatchdog,
    RelayOutbox,
    InferenceRunner,
    InferenceProcessor,
  ],
})
export class WorkerModule implements OnApplicationShutdown {
  /** The configuration and logger are made by main.ts before Nest starts (see ConfigModule). */
  static forRoot(config: AppConfig, logger: AppLogger): DynamicModule {
    return { module: WorkerModule, imports: [ConfigModule.forRoot(config, logger)] };
  }

  constructor(@Inject(REDIS_PUBLISHER) private readonly redis: RedisClient) {}

  async onApplicationShutdown(): Promise<void> {
    await closeRedis(this.redis);
  }
}
