import 'reflect-metadata';
import {
  AppConfig,
  AppLogger,
  armShutdownDeadline,
  COMPLETIONS_QUEUE,
  ConfigError,
  redactFromLogs,
  redisUrlSecrets,
  trackBullmq,
  watchBullmq,
} from '@app/common';
import { getQueueToken } from '@nestjs/bullmq';
import { Logger } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import type { ServerRedis } from '@nestjs/microservices';
import type { Queue } from 'bullmq';
import { CONTROL_SERVER } from './tokens';
import { WorkerIdentity } from './worker-identity';
import { WorkerModule } from './worker.module';

/**
 * The worker is a Nest microservice: control messages (cancel, drain) arrive on its Redis
 * transport, and jobs arrive through the BullMQ processor. Its only HTTP listener is the
 * small metrics/health one on WORKER_METRICS_PORT (see WorkerMetricsServer).
 */
async function bootstrap(): Promise<void> {
  // Nest's own lines are held until the JSON logger is installed, so every line is JSON.
  const app = await NestFactory.create(WorkerModule, { bufferLogs: true });
  const config = app.get(AppConfig);
  // Before the held lines are written: no line ever carries the Redis password.
  redactFromLogs(...redisUrlSecrets(config.env.REDIS_URL));
  app.useLogger(app.get(AppLogger));
  app.enableShutdownHooks();
  // SIGTERM works whatever Redis does: the hooks get the grace period plus a margin, then the
  // connections are force-closed, then the process exits.
  armShutdownDeadline({ graceMs: config.env.AQUEDUCT_SHUTDOWN_GRACE_MS });
  // The queue's producer connection (the processor's Worker has its own): without an 'error'
  // listener BullMQ prints every reconnect attempt to stderr, not as JSON.
  const queue = app.get<Queue>(getQueueToken(COMPLETIONS_QUEUE));
  trackBullmq(queue);
  watchBullmq(queue, 'queue');
  app.connectMicroservice({ strategy: app.get<ServerRedis>(CONTROL_SERVER) });
  await app.init();
  await app.startAllMicroservices();
  new Logger('Worker').log(`worker ${app.get(WorkerIdentity).id} is taking jobs`);
}

bootstrap().catch((err: unknown) => {
  console.error(err instanceof ConfigError ? err.message : err);
  process.exit(1);
});
