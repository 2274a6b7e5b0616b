import { existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { loadEnv, processEnv, type Env } from './env';
import { loadRouterConfig, type RouterConfig } from './router-config';
import { redisNames, type RedisNames } from '../names';

/** Validated configuration shared by every process: environment plus router config. */
export class AppConfig {
  readonly names: RedisNames;

  constructor(
    readonly env: Env,
    readonly router: RouterConfig,
  ) {
    this.names = redisNames(env.AQUEDUCT_REDIS_PREFIX, env.AQUEDUCT_REDIS_CLUSTER);
  }
}

/** The directory holding package.json; the bundled config lives under it. */
export function packageRoot(from = __dirname): string {
  let dir = from;
  while (!existsSync(join(dir, 'package.json')) || !existsSync(join(dir, 'config'))) {
    const parent = dirname(dir);
    if (parent === dir) {
      return process.cwd();
    }
    dir = parent;
  }
  return dir;
}

export function defaultRouterConfigPath(): string {
  return join(packageRoot(), 'config', 'router.yaml');
}

export interface LoadAppConfigOptions {
  /**
   * Whether `os.environ/NAME` api keys are read: true in workers (they call the upstreams,
   * and fail at boot naming a missing variable), false in gateways, which then hold no
   * upstream secret at all.
   */
  resolveSecrets: boolean;
}

/** Loads everything from the real environment; throws ConfigError naming the bad key. */
export function loadAppConfig(opts: LoadAppConfigOptions): AppConfig {
  const env = loadEnv();
  const path = env.AQUEDUCT_CONFIG === undefined ? defaultRouterConfigPath() : resolve(env.AQUEDUCT_CONFIG);
  return new AppConfig(env, loadRouterConfig(path, opts.resolveSecrets ? processEnv() : 'unresolved'));
}
