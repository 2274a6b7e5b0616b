import {
  closeRedis,
  ConfigError,
  createRedis,
  loadEnv,
  redisNames,
  TokenStore,
  UsageStore,
  whenReady,
} from '@app/common';
import { Command } from 'commander';
import type { RedisClient } from '@app/common';
import { registerTokenCommands } from './token-commands';
import { registerUsageCommand } from './usage-command';

/** The operator CLI (`npx aqueduct …`): talks to the same Redis as the gateway. */
async function main(argv: string[]): Promise<void> {
  let redis: RedisClient | undefined;
  const env = () => loadEnv();
  const connect = async (): Promise<RedisClient> => {
    redis = createRedis(env(), 'command', 'aqueduct-cli');
    // The command connection has no offline queue: wait (briefly) for it before the first command.
    await whenReady(redis, 5_000);
    if (redis.status !== 'ready') {
      throw new Error('cannot connect to Redis (REDIS_URL) within 5 s');
    }
    return redis;
  };
  const names = () => redisNames(env().AQUEDUCT_REDIS_PREFIX, env().AQUEDUCT_REDIS_CLUSTER);
  const print = (line: string) => process.stdout.write(`${line}\n`);
  const program = new Command('aqueduct').description('Aqueduct operator CLI').showHelpAfterError();
  registerTokenCommands(program, async () => new TokenStore(await connect(), names()), print);
  registerUsageCommand(
    program,
    async () => new UsageStore(await connect(), names(), env().AQUEDUCT_USAGE_RETENTION_HOURS * 3_600_000),
    print,
  );
  try {
    await program.parseAsync(argv);
  } finally {
    if (redis !== undefined) {
      await closeRedis(redis);
    }
  }
}

main(process.argv).then(
  // Done: exit now rather than when the last timer fires (closeRedis races quit() against a
  // 1 s timer that would otherwise hold the process that long after its output).
  () => process.exit(),
  (err: unknown) => {
    process.stderr.write(`error: ${err instanceof ConfigError || err instanceof Error ? err.message : String(err)}\n`);
    process.exit(1);
  },
);
