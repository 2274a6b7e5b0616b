// Deep imports, not the '@app/common' index: the index loads Nest, BullMQ and the rest of
// both apps (616 ms of a cold start, measured), the CLI needs 7 modules of it (308 ms).
import { ConfigError, loadEnv } from '@app/common/config/env';
import { redisNames } from '@app/common/names';
import { closeRedis, createRedis, type RedisClient, whenReady } from '@app/common/redis/redis-factory';
import { TokenStore } from '@app/common/tokens/token-store';
import { UsageStore } from '@app/common/usage/usage-store';
import { Command } from 'commander';
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
