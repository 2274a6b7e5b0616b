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
  TokenStore,
} from '@app/common';
import { BullModule } from '@nestjs/bullmq';
import { type DynamicModule, Inject, Module, type OnApplicationShutdown } from '@nestjs/common';
import { APP_FILTER, APP_GUARD, DiscoveryModule } from '@nestjs/core';
import { PassportModule } from '@nestjs/passport';
import type Redis from 'ioredis';
import { AdminController } from './admin/admin.controller';
import { AdminGuard } from './admin/admin.guard';
import { BearerAuthGuard } from './auth/bearer-auth.guard';
import { BearerStrategy } from './auth/bearer.strategy';
import { TokenAuthService } from './auth/token-auth.service';
import { CompletionsController } from './completions/completions.controller';
import { CompletionsService } from './completions/completions.service';
import { ControlService } from './control/control.service';
import { CONTROL_CLIENT, CONTROL_SERVER } from './control/control.tokens';
import { GatewayDrain } from './health/gateway-drain';
import { HealthController } from './health/health.controller';
import { DashboardModule } from './observability/dashboard.module';
import { GatewayMetrics } from './observability/gateway-metrics';
import { MeteredControlService } from './observability/metered-control.service';
import { MetricsController } from './observability/metrics.controller';
import { OpenAIExceptionFilter } from './http/openai-exception.filter';
import { RouteTable } from './http/route-table';
import { ModelCatalog } from './models/model-catalog.service';
import { ModelsController } from './models/models.controller';
import { CompletionQueue } from './queue/completion-queue.service';
import { QueueDepth } from './queue/queue-depth.service';
import { LimitsService } from './limits/limits.service';
import { RefusalCounter } from './usage/refusal-counter';
import { GatewayUsage } from './usage/usage.service';
import { REDIS_COMMAND } from './redis/redis.tokens';
import { RelayService } from './relay/relay.service';
import { WorkerRegistry } from './workers/worker-registry.service';

@Module({
  imports: [
    DiscoveryModule,
    PassportModule,
    BullModule.forRootAsync({
      inject: [AppConfig],
      useFactory: (config: AppConfig) => ({
        prefix: config.names.bullPrefix,
        // A producer must fail fast while Redis is down so requests get 503 at once, and
        // reconnect as quickly as the other connections (BullMQ's default backs off to 20 s).
        connection: {
          ...parseRedisUrl(config.env.REDIS_URL),
          enableOfflineQueue: false,
          maxRetriesPerRequest: 1,
          // No auto-pipelining here: ioredis builds a Pipeline per tick that copies every defined
          // script, and BullMQ defines dozens (measured: more CPU per request, not less).
          retryStrategy: reconnectDelay,
        },
      }),
    }),
    BullModule.registerQueue({ name: COMPLETIONS_QUEUE }),
    DashboardModule,
  ],
  controllers: [CompletionsController, ModelsController, HealthController, AdminController, MetricsController],
  providers: [
    Clock,
    GatewayMetrics,
    {
      provide: REDIS_COMMAND,
      inject: [AppConfig],
      useFactory: (config: AppConfig) => createRedis(config.env.REDIS_URL, 'command', 'gateway'),
    },
    {
      provide: TokenStore,
      inject: [REDIS_COMMAND, AppConfig],
      useFactory: (redis: Redis, config: AppConfig) => new TokenStore(redis, config.names),
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
    TokenAuthService,
    BearerStrategy,
    { provide: APP_GUARD, useClass: BearerAuthGuard },
    { provide: APP_FILTER, useClass: OpenAIExceptionFilter },
    RouteTable,
    AdminGuard,
    ModelCatalog,
    GatewayDrain,
    RelayService,
    CompletionQueue,
    QueueDepth,
    LimitsService,
    GatewayUsage,
    RefusalCounter,
    // Counts the cancels it sends (aqueduct_cancellations_total).
    { provide: ControlService, useClass: MeteredControlService },
    WorkerRegistry,
    CompletionsService,
  ],
})
export class GatewayModule implements OnApplicationShutdown {
  /** The configuration and logger are made by main.ts before Nest starts (see ConfigModule). */
  static forRoot(config: AppConfig, logger: AppLogger): DynamicModule {
    return { module: GatewayModule, imports: [ConfigModule.forRoot(config, logger)] };
  }

  constructor(@Inject(REDIS_COMMAND) private readonly redis: Redis) {}

  async onApplicationShutdown(): Promise<void> {
    await closeRedis(this.redis);
  }
}
