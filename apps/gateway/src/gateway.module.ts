import {
  AppConfig,
  AppLogger,
  Clock,
  closeRedis,
  ConfigModule,
  ControlModule,
  createRedis,
  QueueModule,
  TokenStore,
} from '@app/common';
import { type DynamicModule, Inject, Module, type OnApplicationShutdown } from '@nestjs/common';
import { APP_FILTER, APP_GUARD, DiscoveryModule } from '@nestjs/core';
import { PassportModule } from '@nestjs/passport';
import type { RedisClient } from '@app/common';
import { AdminController } from './admin/admin.controller';
import { AdminGuard } from './admin/admin.guard';
import { BearerAuthGuard } from './auth/bearer-auth.guard';
import { BearerStrategy } from './auth/bearer.strategy';
import { TokenAuthService } from './auth/token-auth.service';
import { InferenceController } from './inference/inference.controller';
import { InferenceService } from './inference/inference.service';
import { ControlService } from './control/control.service';
import { GatewayDrain } from './health/gateway-drain';
import { HealthController } from './health/health.controller';
import { DashboardModule } from './observability/dashboard.module';
import { GatewayMetrics } from './observability/gateway-metrics';
import { MeteredControlService } from './observability/metered-control.service';
import { MetricsController } from './observability/metrics.controller';
import { OpenAIExceptionFilter } from './http/openai-exception.filter';
import { RouteTable } from './http/route-table';
import { ModelCatalogService } from './models/model-catalog.service';
import { ModelsController } from './models/models.controller';
import { JobQueueService } from './queue/job-queue.service';
import { DrainEstimator } from './queue/drain-estimator';
import { QueueDepthService } from './queue/queue-depth.service';
import { LimitsService } from './limits/limits.service';
import { RefusalCounter } from './usage/refusal-counter';
import { UsageService } from './usage/usage.service';
import { REDIS_COMMAND } from './redis/redis.tokens';
import { RelayService } from './relay/relay.service';
import { WorkerRegistryService } from './workers/worker-registry.service';

@Module({
  imports: [DiscoveryModule, PassportModule, QueueModule.forRole('producer'), ControlModule, DashboardModule],
  controllers: [InferenceController, ModelsController, HealthController, AdminController, MetricsController],
  providers: [
    Clock,
    GatewayMetrics,
    {
      provide: REDIS_COMMAND,
      inject: [AppConfig],
      useFactory: (config: AppConfig) => createRedis(config.env, 'command', 'gateway'),
    },
    {
      provide: TokenStore,
      inject: [REDIS_COMMAND, AppConfig],
      useFactory: (redis: RedisClient, config: AppConfig) => new TokenStore(redis, config.names),
    },
    TokenAuthService,
    BearerStrategy,
    { provide: APP_GUARD, useClass: BearerAuthGuard },
    { provide: APP_FILTER, useClass: OpenAIExceptionFilter },
    RouteTable,
    AdminGuard,
    ModelCatalogService,
    GatewayDrain,
    RelayService,
    JobQueueService,
    QueueDepthService,
    DrainEstimator,
    LimitsService,
    UsageService,
    RefusalCounter,
    // Counts the cancels it sends (aqueduct_cancellations_total).
    { provide: ControlService, useClass: MeteredControlService },
    WorkerRegistryService,
    InferenceService,
  ],
})
export class GatewayModule implements OnApplicationShutdown {
  /** The configuration and logger are made by main.ts before Nest starts (see ConfigModule). */
  static forRoot(config: AppConfig, logger: AppLogger): DynamicModule {
    return { module: GatewayModule, imports: [ConfigModule.forRoot(config, logger)] };
  }

  constructor(@Inject(REDIS_COMMAND) private readonly redis: RedisClient) {}

  async onApplicationShutdown(): Promise<void> {
    await closeRedis(this.redis);
  }
}
