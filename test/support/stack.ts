import { type ChildProcess, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdtempSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import Redis, { Cluster } from 'ioredis';
import { type RedisClient, redisNames, TokenStore, type TokenCreateOptions } from '../../libs/common/src';

/** The repository root, whether this file runs from test/support or compiled under dist/. */
function findRoot(dir: string): string {
  return existsSync(join(dir, 'package.json')) || dirname(dir) === dir ? dir : findRoot(dirname(dir));
}
export const ROOT = findRoot(__dirname);
export const REDIS_URL = process.env.REDIS_URL ?? 'redis://127.0.0.1:6379';
const ENTRY = {
  gateway: join(ROOT, 'dist/apps/gateway/apps/gateway/src/main.js'),
  worker: join(ROOT, 'dist/apps/worker/apps/worker/src/main.js'),
};

export function uniquePrefix(label: string): string {
  return `aqtest-${label}-${randomBytes(4).toString('hex')}`;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address() as { port: number };
      srv.close(() => resolve(port));
    });
  });
}

/** Writes a router config YAML to a temp file and returns its path. */
export function writeRouterConfig(yaml: string): string {
  const dir = mkdtempSync(join(tmpdir(), 'aqueduct-cfg-'));
  const file = join(dir, 'router.yaml');
  writeFileSync(file, yaml);
  return file;
}

export interface ProcessHandle {
  child: ChildProcess;
  output: () => string;
  stop: (signal?: NodeJS.Signals) => Promise<number | null>;
}

function launch(role: 'gateway' | 'worker', env: Record<string, string>): ProcessHandle {
  // The same V8 flags as production (package.json start scripts, Dockerfile).
  const flags = ['--enable-source-maps', '--max-semi-space-size=16', '--heap-growing-percent=50'];
  const child = spawn(process.execPath, [...flags, ENTRY[role]], {
    env: { PATH: process.env.PATH ?? '', LOG_LEVEL: 'warn', ...env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  return {
    child,
    output: () => out,
    stop: async (signal = 'SIGTERM') => {
      if (child.exitCode === null && child.signalCode === null) {
        child.kill(signal);
      }
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
  };
}

export interface StackOptions {
  routerConfig?: string;
  workers?: number;
  env?: Record<string, string>;
  workerEnv?: Record<string, string>;
  /** The Redis of the processes and of the stack's own client (default REDIS_URL), e.g. a PrivateRedis. */
  redisUrl?: string;
  /** `redisUrl` is the seed list of a Redis Cluster (test/support/redis-cluster.ts): AQUEDUCT_REDIS_CLUSTER=true. */
  cluster?: boolean;
}

/** A real gateway and real workers as child processes, on a private key prefix. */
export class Stack {
  readonly prefix: string;
  readonly port: number;
  readonly redis: RedisClient;
  readonly tokens: TokenStore;
  gateway!: ProcessHandle;
  readonly workers: ProcessHandle[] = [];
  /** Further gateway instances (same Redis, same prefix), with their base URLs. */
  readonly extraGateways: { handle: ProcessHandle; baseUrl: string }[] = [];
  private readonly env: Record<string, string>;

  private constructor(
    prefix: string,
    port: number,
    private readonly opts: StackOptions,
  ) {
    this.prefix = prefix;
    this.port = port;
    const redisUrl = opts.redisUrl ?? REDIS_URL;
    const cluster = opts.cluster === true;
    this.redis = cluster
      ? new Cluster(
          redisUrl.split(',').map((u) => ({ host: new URL(u).hostname, port: Number(new URL(u).port) })),
          { scaleReads: 'master', redisOptions: { maxRetriesPerRequest: 1 } },
        )
      : new Redis(redisUrl, { maxRetriesPerRequest: 1 });
    // A private Redis may be down on purpose: its client's errors are expected, not news.
    this.redis.on('error', () => undefined);
    this.tokens = new TokenStore(this.redis, redisNames(prefix, cluster));
    this.env = {
      REDIS_URL: redisUrl,
      ...(cluster && { AQUEDUCT_REDIS_CLUSTER: 'true' }),
      AQUEDUCT_REDIS_PREFIX: prefix,
      PORT: String(port),
      HOST: '127.0.0.1',
      AQUEDUCT_HEARTBEAT_MS: '500',
      ...(opts.routerConfig !== undefined && { AQUEDUCT_CONFIG: opts.routerConfig }),
      ...opts.env,
    };
  }

  static async start(label: string, opts: StackOptions = {}): Promise<Stack> {
    const stack = new Stack(uniquePrefix(label), await freePort(), opts);
    stack.gateway = launch('gateway', stack.env);
    for (let i = 0; i < (opts.workers ?? 1); i++) {
      stack.addWorker();
    }
    try {
      await stack.waitReady();
    } catch (err) {
      await stack.stop();
      throw err;
    }
    return stack;
  }

  /** Starts the processes without waiting for /ready: for boot-time faults (Redis down, bad config). */
  static async launch(label: string, opts: StackOptions = {}): Promise<Stack> {
    const stack = new Stack(uniquePrefix(label), await freePort(), opts);
    stack.gateway = launch('gateway', stack.env);
    for (let i = 0; i < (opts.workers ?? 1); i++) {
      stack.addWorker();
    }
    return stack;
  }

  get baseUrl(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  addWorker(env: Record<string, string> = {}): ProcessHandle {
    const w = launch('worker', { ...this.env, ...this.opts.workerEnv, ...env });
    this.workers.push(w);
    return w;
  }

  /** Starts another gateway instance on its own port and waits until it is ready. */
  async addGateway(): Promise<string> {
    const port = await freePort();
    const handle = launch('gateway', { ...this.env, PORT: String(port) });
    const baseUrl = `http://127.0.0.1:${port}`;
    this.extraGateways.push({ handle, baseUrl });
    await waitFor(baseUrl, handle, 30_000);
    return baseUrl;
  }

  async createKey(opts: Partial<TokenCreateOptions> = {}): Promise<string> {
    const { key } = await this.tokens.create({ name: 'test', ...opts });
    return key;
  }

  /** Until /ready is 200: Redis reachable and a worker alive. */
  async waitReady(timeoutMs = 30_000): Promise<void> {
    try {
      await waitFor(this.baseUrl, this.gateway, timeoutMs);
    } catch (err) {
      const workers = this.workers.map((w) => w.output()).join('\n');
      throw new Error(`${(err as Error).message}\n--- workers ---\n${workers}`, { cause: err });
    }
  }

  async stop(): Promise<void> {
    await Promise.all([
      this.gateway.stop(),
      ...this.extraGateways.map((g) => g.handle.stop()),
      ...this.workers.map((w) => w.stop()),
    ]);
    await deleteByPrefix(this.redis, this.prefix);
    await this.redis.quit();
  }
}

async function waitFor(baseUrl: string, gateway: ProcessHandle, timeoutMs: number): Promise<void> {
  const until = Date.now() + timeoutMs;
  let last = '';
  while (Date.now() < until) {
    if (gateway.child.exitCode !== null) {
      throw new Error(`gateway exited during startup:\n${gateway.output()}`);
    }
    try {
      const res = await fetch(`${baseUrl}/ready`);
      last = await res.text();
      if (res.status === 200) {
        return;
      }
    } catch (err) {
      last = String(err);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`gateway not ready: ${last}\n--- gateway ---\n${gateway.output()}`);
}

/** Deletes a test's keys (on a cluster, on every master: SCAN sees one node's keys only). */
export async function deleteByPrefix(redis: RedisClient, prefix: string, clusterNode = false): Promise<void> {
  if (redis instanceof Cluster) {
    await Promise.all(redis.nodes('master').map((node) => deleteByPrefix(node, prefix, true)));
    return;
  }
  let cursor = '0';
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
    cursor = next;
    if (keys.length > 0 && !clusterNode) {
      await redis.del(...keys);
    } else if (keys.length > 0) {
      // A cluster node refuses a DEL of keys in several slots (CROSSSLOT): one key each.
      const p = redis.pipeline();
      keys.forEach((k) => p.del(k));
      await p.exec();
    }
  } while (cursor !== '0');
}
