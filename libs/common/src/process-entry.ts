import { type AppConfig, loadAppConfig } from './config/app-config';
import { AppLogger, createLogger, redactFromLogs, reportFatal, routeProcessOutput } from './observability/logger';
import { redisUrlSecrets } from './redis/redis-url';

/**
 * The entry of a gateway or worker process, so that every line either writes is JSON: the
 * config is loaded and the logger built before Nest starts; a bad configuration, or any
 * boot failure, is one fatal JSON line (naming the key, never a value) and exit code 1.
 */
export function runProcess(
  app: 'gateway' | 'worker',
  opts: { resolveSecrets: boolean },
  bootstrap: (config: AppConfig, logger: AppLogger) => Promise<void>,
): void {
  let config: AppConfig;
  try {
    config = loadAppConfig(opts);
  } catch (err) {
    reportFatal(createLogger({ app, level: 'info' }), err);
    process.exit(1);
  }
  // Before any line is written: no line ever carries the Redis password.
  redactFromLogs(...redisUrlSecrets(config.env.REDIS_URL));
  const logger = new AppLogger(createLogger({ app, level: config.env.LOG_LEVEL }));
  routeProcessOutput(logger.pino);
  bootstrap(config, logger).catch((err: unknown) => {
    reportFatal(logger.pino, err);
    process.exit(1);
  });
}
