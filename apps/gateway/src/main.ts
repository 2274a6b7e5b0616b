import 'reflect-metadata';
import {
  AppConfig,
  announceRedisWait,
  AppLogger,
  armShutdownDeadline,
  runProcess,
  CONTROL_SERVER,
  OPERATIONS,
} from '@app/common';
import { Logger } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import type { NestExpressApplication } from '@nestjs/platform-express';
import type { ServerRedis } from '@nestjs/microservices';
import type { RedisClient } from '@app/common';
import { authenticateFirst } from './auth/authenticate-first';
import { GatewayModule } from './gateway.module';
import { GatewayDrain } from './health/gateway-drain';
import { GatewayHttpAdapter } from './http/gateway-http.adapter';
import { apiCors } from './http/api-cors';
import { jsonBody } from './http/json-body';
import { requestId } from './http/request-id';
import { GatewayMetrics } from './observability/gateway-metrics';
import { httpObserver } from './observability/http-observer';
import { REDIS_COMMAND } from './redis/redis.tokens';
import { RefusalCounter } from './usage/refusal-counter';

async function bootstrap(config: AppConfig, logger: AppLogger): Promise<void> {
  // Nest logs through the JSON logger from its first line: nothing is buffered, nothing plain.
  const app = await NestFactory.create<NestExpressApplication>(
    GatewayModule.forRoot(config, logger),
    new GatewayHttpAdapter(),
    // abortOnError: false: a failed init is thrown to the catch below (one JSON line, exit 1)
    // instead of Nest's process.abort().
    { bodyParser: false, logger, abortOnError: false },
  );
  app.disable('x-powered-by');
  // req.ip believes X-Forwarded-For only from the configured proxies.
  app.set('trust proxy', config.env.AQUEDUCT_TRUSTED_PROXIES.length > 0 ? config.env.AQUEDUCT_TRUSTED_PROXIES : false);
  app.use(requestId);
  // Before anything that may answer: every response gets its log line and its metrics.
  app.use(httpObserver(logger.pino, app.get(GatewayMetrics), app.get(RefusalCounter)));
  app.use(apiCors());
  // During the shutdown drain: new API requests get 503 gateway_shutdown, every response Connection: close.
  app.use(app.get(GatewayDrain).middleware());
  // Bodies are parsed only where a route takes one, so an unknown route is a 404, not a 415.
  // Not for the dashboard (/admin/queues): Bull Board parses its own requests.
  const adminBodyRoutes = ['/admin/tokens', '/admin/usage'];
  const apiBodyRoutes = Object.values(OPERATIONS).flatMap((op) => [`/${op.route}`, `/v1/${op.route}`]);
  const bodyRoutes = [...apiBodyRoutes, ...(config.env.AQUEDUCT_ADMIN_KEY ? adminBodyRoutes : [])];
  // The token is checked before the body is read: no parsing for unauthenticated clients.
  app.use(apiBodyRoutes, authenticateFirst());
  app.use(bodyRoutes, ...jsonBody(config.env.AQUEDUCT_MAX_BODY_BYTES));
  app.enableShutdownHooks();
  // SIGTERM works whatever Redis does: the hooks get the grace period plus a margin, then the
  // connections are force-closed, then the process exits.
  armShutdownDeadline({ graceMs: config.env.AQUEDUCT_SHUTDOWN_GRACE_MS });
  // Heartbeats from workers arrive on the control transport: the gateway is a hybrid app.
  app.connectMicroservice({ strategy: app.get<ServerRedis>(CONTROL_SERVER) }, { inheritAppConfig: true });
  // None of these waits for Redis (subscriptions and seeding run in the background): the
  // gateway listens at once, /health answers, /ready and the API say 503 until Redis answers.
  await app.init();
  await app.startAllMicroservices();
  await app.listen(config.env.PORT, config.env.HOST);
  new Logger('Gateway').log(`listening on http://${config.env.HOST}:${config.env.PORT}`);
  announceRedisWait(app.get<RedisClient>(REDIS_COMMAND), config.env.REDIS_URL, 'gateway');
}

// The gateway calls no upstream: os.environ/NAME api keys are neither read nor kept.
runProcess('gateway', { resolveSecrets: false }, bootstrap);
