import 'reflect-metadata';
import { announceRedisWait, AppConfig, AppLogger, armShutdownDeadline, runProcess, CONTROL_SERVER } from '@app/common';
import { Logger } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import type { ServerRedis } from '@nestjs/microservices';
import type { RedisClient } from '@app/common';
import { REDIS_PUBLISHER } from './tokens';
import { WorkerIdentity } from './worker-identity';
import { WorkerModule } from './worker.module';

/**
 * The worker is a Nest microservice: control messages (cancel, drain) arrive on its Redis
 * transport, and jobs arrive through the BullMQ processor. Its only HTTP listener is the
 * small metrics/health one on WORKER_METRICS_PORT (see WorkerMetricsServer).
 */
async function bootstrap(config: AppConfig, logger: AppLogger): Promise<void> {
  // Nest logs through the JSON logger from its first line; a failed init is thrown to the
  // catch below (abortOnError: false) instead of Nest's process.abort().
  const app = await NestFactory.create(WorkerModule.forRoot(config, logger), { logger, abortOnError: false });
  app.enableShutdownHooks();
  // SIGTERM works whatever Redis does: the hooks get the grace period plus a margin, then the
  // connections are force-closed, then the process exits.
  armShutdownDeadline({ graceMs: config.env.AQUEDUCT_SHUTDOWN_GRACE_MS });
  app.connectMicroservice({ strategy: app.get<ServerRedis>(CONTROL_SERVER) });
  // Nothing here waits for Redis: the BullMQ worker and the control transport connect in
  // the background and the worker takes jobs as soon as Redis answers.
  await app.init();
  await app.startAllMicroservices();
  new Logger('Worker').log(`worker ${app.get(WorkerIdentity).id} is taking jobs`);
  announceRedisWait(app.get<RedisClient>(REDIS_PUBLISHER), config.env.REDIS_URL, 'worker');
}

// Workers call the upstreams: a missing os.environ/NAME stops them here, naming it.
runProcess('worker', { resolveSecrets: true }, bootstrap);
