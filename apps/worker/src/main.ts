import 'reflect-metadata';
import { AppLogger, ConfigError } from '@app/common';
import { Logger } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import type { ServerRedis } from '@nestjs/microservices';
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
  app.useLogger(app.get(AppLogger));
  app.enableShutdownHooks();
  app.connectMicroservice({ strategy: app.get<ServerRedis>(CONTROL_SERVER) });
  await app.init();
  await app.startAllMicroservices();
  new Logger('Worker').log(`worker ${app.get(WorkerIdentity).id} is taking jobs`);
}

bootstrap().catch((err: unknown) => {
  console.error(err instanceof ConfigError ? err.message : err);
  process.exit(1);
});
