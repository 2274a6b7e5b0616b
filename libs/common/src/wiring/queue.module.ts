import { BullModule } from '@nestjs/bullmq';
import { type DynamicModule, Module } from '@nestjs/common';
import { AppConfig } from '../config/app-config';
import { COMPLETIONS_QUEUE } from '../names';
import { reconnectDelay } from '../redis/reconnect-delay';
import { parseRedisUrl } from '../redis/redis-url';

/**
 * The BullMQ connection and the jobs queue, as both apps need them. A producer (gateway)
 * must fail fast while Redis is down, so requests get 503 at once; a consumer (worker)
 * blocks on Redis, and BullMQ requires `maxRetriesPerRequest: null` for that.
 */
@Module({})
export class QueueModule {
  static forRole(role: 'producer' | 'consumer'): DynamicModule {
    return {
      module: QueueModule,
      imports: [
        BullModule.forRootAsync({
          inject: [AppConfig],
          useFactory: (config: AppConfig) => ({
            prefix: config.names.bullPrefix,
            connection: {
              ...parseRedisUrl(config.env.REDIS_URL),
              ...(role === 'producer'
                ? { enableOfflineQueue: false, maxRetriesPerRequest: 1 }
                : { maxRetriesPerRequest: null }),
              // No auto-pipelining here: ioredis builds a Pipeline per tick that copies every defined
              // script, and BullMQ defines dozens (measured: more CPU per request, not less).
              // Reconnect as quickly as the other connections (BullMQ's default backs off to 20 s).
              retryStrategy: reconnectDelay,
            },
          }),
        }),
        BullModule.registerQueue({ name: COMPLETIONS_QUEUE }),
      ],
      exports: [BullModule],
    };
  }
}
