import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Cluster } from 'ioredis';
import { freePort, Stack, type StackOptions } from './stack';

const run = promisify(execFile);

/** One `redis-server --cluster-enabled yes` of a {@link RedisCluster}. */
interface ClusterNode {
  port: number;
  child: ChildProcess;
  exited: Promise<void>;
  log: string;
}

/**
 * A throw-away Redis Cluster for the cluster suite: 3 masters (and, with `replicas: 1`, one
 * replica each) on free ports, never the shared Redis on 6379, no persistence, its node
 * configs in a temporary directory. `stop()` kills every node and removes the directory;
 * nodes also die with the test process, so a failed or aborted run leaves nothing behind.
 */
export class RedisCluster {
  private constructor(
    private readonly dir: string,
    private readonly nodes: ClusterNode[],
  ) {}

  /**
   * `nodeTimeoutMs`: how long a node may be unreachable before the others mark it failed and
   * its replica takes over (redis.conf's cluster-node-timeout, 15 s by default: a failover
   * test sets it short).
   */
  static async start(opts: { masters?: number; replicas?: 0 | 1; nodeTimeoutMs?: number } = {}): Promise<RedisCluster> {
    const masters = opts.masters ?? 3;
    const replicas = opts.replicas ?? 0;
    const nodeTimeoutMs = opts.nodeTimeoutMs ?? 15_000;
    const dir = mkdtempSync(join(tmpdir(), 'aqueduct-cluster-'));
    const cluster = new RedisCluster(dir, []);
    try {
      const ports = await distinctFreePorts(masters * (1 + replicas));
      for (const port of ports) {
        cluster.nodes.push(launchNode(dir, port, nodeTimeoutMs));
      }
      await Promise.all(cluster.nodes.map((n) => waitForPing(n)));
      await run('redis-cli', [
        '--cluster',
        'create',
        ...ports.map((p) => `127.0.0.1:${p}`),
        '--cluster-replicas',
        String(replicas),
        '--cluster-yes',
      ]);
      await cluster.waitHealthy();
      if (replicas > 0) {
        await cluster.waitReplicasInSync();
      }
    } catch (err) {
      const logs = cluster.nodes.map((n) => `--- node ${n.port} ---\n${n.log}`).join('\n');
      await cluster.stop();
      throw new Error(`Redis Cluster did not start: ${(err as Error).message}\n${logs}`, { cause: err });
    }
    return cluster;
  }

  /**
   * A gateway and workers on this cluster (AQUEDUCT_REDIS_CLUSTER=true, the seed list as
   * REDIS_URL). When they cannot start, the cluster is stopped too, so that a failed
   * `beforeAll` leaves no node behind.
   */
  async stack(label: string, opts: Omit<StackOptions, 'redisUrl' | 'cluster'> = {}): Promise<Stack> {
    try {
      return await Stack.start(label, { ...opts, redisUrl: this.url, cluster: true });
    } catch (err) {
      await this.stop();
      throw err;
    }
  }

  /** The seed list, as REDIS_URL takes it with AQUEDUCT_REDIS_CLUSTER=true. */
  get url(): string {
    return this.nodes.map((n) => `redis://127.0.0.1:${n.port}`).join(',');
  }

  get ports(): number[] {
    return this.nodes.map((n) => n.port);
  }

  /** A client for the test itself (offline queue on: it may be used before the first 'ready'). */
  client(): Cluster {
    const client = new Cluster(
      this.nodes.map((n) => ({ host: '127.0.0.1', port: n.port })),
      { scaleReads: 'master', redisOptions: { maxRetriesPerRequest: 1 } },
    );
    client.on('error', () => undefined);
    return client;
  }

  /** Until every node reports `cluster_state:ok` (slots assigned and agreed on by all). */
  async waitHealthy(timeoutMs = 20_000): Promise<void> {
    const until = Date.now() + timeoutMs;
    let last = '';
    while (Date.now() < until) {
      const states = await Promise.all(
        this.nodes.map((n) =>
          run('redis-cli', ['-p', String(n.port), 'cluster', 'info']).then(
            ({ stdout }) => /cluster_state:(\w+)/.exec(stdout)?.[1] ?? '?',
            (err: Error) => err.message,
          ),
        ),
      );
      last = states.join(', ');
      if (states.every((s) => s === 'ok')) {
        return;
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`cluster_state not ok on every node within ${timeoutMs} ms: ${last}`);
  }

  /** Until every replica's link to its master is up (a replica that never synced cannot take over). */
  async waitReplicasInSync(timeoutMs = 20_000): Promise<void> {
    const until = Date.now() + timeoutMs;
    while (Date.now() < until) {
      const infos = await Promise.all(
        this.nodes.map((n) => run('redis-cli', ['-p', String(n.port), 'info', 'replication']).then((r) => r.stdout)),
      );
      if (infos.every((i) => i.includes('role:master') || i.includes('master_link_status:up'))) {
        return;
      }
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error(`replicas not in sync within ${timeoutMs} ms`);
  }

  /** The port of the master that serves `key`'s slot now. */
  async masterOf(key: string): Promise<number> {
    const slot = Number((await this.cli(this.alivePort(), 'cluster', 'keyslot', key)).trim());
    return this.ownerOf(slot);
  }

  /** The port of the master that serves `slot` now. */
  async ownerOf(slot: number): Promise<number> {
    const owner = (await this.liveMasters()).find((m) => m.ranges.some(([from, to]) => slot >= from && slot <= to));
    if (owner === undefined) {
      throw new Error(`no master serves slot ${slot}`);
    }
    return owner.port;
  }

  /** How many times node `port` has run `command` (INFO commandstats). */
  async commandCalls(port: number, command: string): Promise<number> {
    const stats = await this.cli(port, 'info', 'commandstats');
    return Number(new RegExp(`^cmdstat_${command.toLowerCase()}:calls=(\\d+)`, 'm').exec(stats)?.[1] ?? 0);
  }

  /** The ports of the masters that are up. */
  async masterPorts(): Promise<number[]> {
    return (await this.liveMasters()).map((m) => m.port);
  }

  /** The masters that are up, from CLUSTER NODES: port and slot ranges. */
  private async liveMasters(): Promise<{ port: number; ranges: [number, number][] }[]> {
    const masters: { port: number; ranges: [number, number][] }[] = [];
    for (const line of (await this.cli(this.alivePort(), 'cluster', 'nodes')).trim().split('\n')) {
      const [, address = '', flags = '', , , , , , ...slots] = line.split(' ');
      if (!flags.includes('master') || flags.includes('fail')) {
        continue;
      }
      // Ranges are "a-b" or a single slot; "[slot->-id]" entries (a migration under way) are skipped.
      const ranges = slots
        .filter((r) => /^\d+(-\d+)?$/.test(r))
        .map((r): [number, number] => {
          const [from, to = from] = r.split('-').map(Number) as [number, number?];
          return [from, to];
        });
      masters.push({ port: Number(address.split(':')[1]?.split('@')[0]), ranges });
    }
    return masters;
  }

  /**
   * Moves one slot, keys included, to the master on `toPort`, as `redis-cli --cluster reshard`
   * does it: IMPORTING on the target, MIGRATING on the source, MIGRATE of its keys, then
   * SETSLOT NODE on every master. Sharded pub/sub subscribers of the slot's channels are
   * unsubscribed by the source node when it gives the slot away.
   */
  async migrateSlot(slot: number, toPort: number): Promise<void> {
    const fromPort = await this.ownerOf(slot);
    if (fromPort === toPort) {
      return;
    }
    const id = async (port: number) => (await this.cli(port, 'cluster', 'myid')).trim();
    const [fromId, toId] = [await id(fromPort), await id(toPort)];
    await this.cli(toPort, 'cluster', 'setslot', String(slot), 'importing', fromId);
    await this.cli(fromPort, 'cluster', 'setslot', String(slot), 'migrating', toId);
    for (;;) {
      const keys = (await this.cli(fromPort, 'cluster', 'getkeysinslot', String(slot), '100'))
        .split('\n')
        .filter(Boolean);
      if (keys.length === 0) {
        break;
      }
      await this.cli(fromPort, 'migrate', '127.0.0.1', String(toPort), '', '0', '5000', 'KEYS', ...keys);
    }
    const masters = await this.masterPorts();
    for (const port of [toPort, fromPort, ...masters.filter((p) => p !== toPort && p !== fromPort)]) {
      await this.cli(port, 'cluster', 'setslot', String(slot), 'node', toId);
    }
  }

  private alivePort(): number {
    const alive = this.nodes.find((n) => n.child.exitCode === null && n.child.signalCode === null);
    if (alive === undefined) {
      throw new Error('no node of the cluster is up');
    }
    return alive.port;
  }

  /** redis-cli exits 0 on a Redis error too: an error reply throws here. */
  private async cli(port: number, ...args: string[]): Promise<string> {
    const { stdout } = await run('redis-cli', ['-p', String(port), ...args]);
    if (/^(ERR|\(error\)|[A-Z]+ERR) /.test(stdout)) {
      throw new Error(`redis-cli -p ${port} ${args.join(' ')}: ${stdout.trim()}`);
    }
    return stdout;
  }

  /** Kills one node at once (SIGKILL: no goodbye to the cluster, as a crashed host). */
  async kill(port: number): Promise<void> {
    const node = this.nodes.find((n) => n.port === port);
    if (node === undefined) {
      throw new Error(`no node on port ${port}`);
    }
    node.child.kill('SIGKILL');
    await node.exited;
  }

  async stop(): Promise<void> {
    await Promise.all(
      this.nodes.map(async (n) => {
        if (n.child.exitCode === null && n.child.signalCode === null) {
          n.child.kill('SIGKILL');
        }
        await n.exited;
      }),
    );
    rmSync(this.dir, { recursive: true, force: true });
  }
}

function launchNode(dir: string, port: number, nodeTimeoutMs: number): ClusterNode {
  const child = spawn(
    'redis-server',
    [
      '--port',
      String(port),
      '--bind',
      '127.0.0.1',
      '--cluster-enabled',
      'yes',
      '--cluster-config-file',
      join(dir, `nodes-${port}.conf`),
      '--cluster-node-timeout',
      String(nodeTimeoutMs),
      '--dir',
      dir,
      '--save',
      '',
      '--appendonly',
      'no',
      '--logfile',
      '',
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const node: ClusterNode = {
    port,
    child,
    exited: new Promise<void>((resolve) => child.once('exit', () => resolve())),
    log: '',
  };
  const keep = (d: Buffer) => (node.log = (node.log + d.toString()).slice(-10_000));
  child.stdout?.on('data', keep);
  child.stderr?.on('data', keep);
  // Never outlive the test process, even when it dies without cleaning up.
  const killOnExit = () => child.kill('SIGKILL');
  process.once('exit', killOnExit);
  void node.exited.then(() => process.off('exit', killOnExit));
  return node;
}

async function waitForPing(node: ClusterNode, timeoutMs = 10_000): Promise<void> {
  const until = Date.now() + timeoutMs;
  while (Date.now() < until) {
    if (node.child.exitCode !== null) {
      throw new Error(`redis-server on port ${node.port} exited at start`);
    }
    const pong = await run('redis-cli', ['-p', String(node.port), 'ping']).then(
      ({ stdout }) => stdout.trim() === 'PONG',
      () => false,
    );
    if (pong) {
      return;
    }
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`redis-server on port ${node.port} did not answer PING within ${timeoutMs} ms`);
}

/**
 * Free ports whose cluster bus ports (port + 10000) are free and below 65536 too, never
 * 6379 (the shared Redis), and distinct.
 */
async function distinctFreePorts(n: number): Promise<number[]> {
  const ports = new Set<number>();
  for (let tries = 0; ports.size < n; tries++) {
    if (tries > 1_000) {
      throw new Error('no free port pairs (port, port + 10000) for the cluster');
    }
    const port = await freePort();
    const clashes = ports.has(port + 10_000) || ports.has(port - 10_000);
    if (port !== 6379 && port + 10_000 < 65_536 && !clashes && (await isFree(port + 10_000))) {
      ports.add(port);
    }
  }
  return [...ports];
}

function isFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const srv = createServer();
    srv.once('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
}
