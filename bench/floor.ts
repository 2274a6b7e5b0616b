import { type ChildProcess, fork } from 'node:child_process';
import { rmSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { PrivateRedis } from '../test/support/private-redis';
import { freePort, Stack, writeRouterConfig } from '../test/support/stack';
import { CpuMeter, rssMiB } from './cpu';
import { type Cleanup, f2, intEnv, runBench } from './harness';
import { createPool, type NonStreamResult, runNonStream, type Target } from './load';
import { table } from './relay-transport';

/**
 * `npm run bench:floor`: Aqueduct beside the floor of its own pipeline (bench/floor/): a
 * gateway and a worker that only add a BullMQ job, call the upstream and publish the answer,
 * with nothing else (no auth, limits, usage, retries). Both run as two processes on one
 * private Redis against the same fake upstream, measured one after the other, ROUNDS times.
 *
 * The floor is what the contract's pipeline (gateway → BullMQ → worker → backend → Redis →
 * gateway) costs on this machine whatever is built on it; Aqueduct / floor is how much of it
 * Aqueduct's features and design add. Compare the floor with a single-process proxy (e.g. in
 * ../shared/bench/vs-peers.sh) to see what the pipeline itself allows.
 */

const DURATION_MS = intEnv('BENCH_FLOOR_DURATION_MS', 8_000, 1_000, 60_000);
const WARMUP_MS = intEnv('BENCH_FLOOR_WARMUP_MS', 2_000, 0, 10_000);
const ROUNDS = intEnv('BENCH_FLOOR_ROUNDS', 2, 1, 10);
const CONCURRENCIES = [16, 1];
const WATCHDOG_MS = ROUNDS * 2 * CONCURRENCIES.length * (DURATION_MS + WARMUP_MS + 5_000) + 90_000;
/** The production V8 flags (package.json start scripts), for the floor's processes too. */
const NODE_FLAGS = ['--max-semi-space-size=16', '--heap-growing-percent=50'];
const BODY = { prompt: 'measure the gateway overhead with a short prompt', max_tokens: 16 };

interface System {
  name: string;
  baseUrl: string;
  pids: { gateway: number; worker: number };
  target: Target;
}

interface Row {
  system: string;
  round: number;
  concurrency: number;
  result: NonStreamResult;
  cpuMsPerRequest: { gateway: number; worker: number; redis: number; total: number };
  /** The load generator's share of one core: near 100, it (not the system) bounds req/s. */
  benchCpuPct: number;
  rssMiB: { gateway: number; worker: number };
}

/**
 * A process of bench/floor/, started with fork() so that it can say when it listens or takes
 * jobs (its first IPC message, also returned).
 */
async function startFloorProcess(
  file: string,
  args: string[],
  cleanup: Cleanup,
): Promise<{ child: ChildProcess; ready: unknown }> {
  const child = fork(join(__dirname, 'floor', file), args, { execArgv: NODE_FLAGS, stdio: 'inherit' });
  cleanup.add(file, () => {
    child.kill('SIGKILL');
  });
  const ready = await new Promise<unknown>((resolve, reject) => {
    child.once('message', resolve);
    child.once('exit', (code) => reject(new Error(`${file} exited with ${code ?? 'a signal'} before it was ready`)));
  });
  return { child, ready };
}

async function measure(system: System, meter: CpuMeter, concurrency: number, round: number): Promise<Row> {
  const pool = createPool(system.baseUrl, concurrency);
  try {
    await runNonStream(pool, system.target, concurrency, WARMUP_MS);
    const before = await meter.sample();
    const result = await runNonStream(pool, system.target, concurrency, DURATION_MS);
    const used = CpuMeter.delta(before, await meter.sample());
    const per = (ms: number | undefined) => (ms ?? Number.NaN) / result.ok;
    const gateway = per(used.gateway);
    const worker = per(used.worker);
    const redis = per(used.redis);
    return {
      system: system.name,
      round,
      concurrency,
      result,
      cpuMsPerRequest: { gateway, worker, redis, total: gateway + worker + redis },
      benchCpuPct: ((used.bench ?? Number.NaN) / result.elapsedMs) * 100,
      rssMiB: { gateway: rssMiB(system.pids.gateway), worker: rssMiB(system.pids.worker) },
    };
  } finally {
    await pool.close();
  }
}

const mean = (xs: number[]) => xs.reduce((a, b) => a + b, 0) / xs.length;

async function main(cleanup: Cleanup): Promise<void> {
  const redis = await PrivateRedis.start();
  cleanup.add('private redis', () => redis.stop());
  // In a process of its own: the bench process runs the load generator only.
  const upstream = await startFloorProcess('upstream.js', [], cleanup);
  const upstreamOrigin = `http://127.0.0.1:${Number(upstream.ready)}`;

  const routerConfig = writeRouterConfig(`
model_list:
  - model_name: bench
    litellm_params:
      model: openai/fake-model
      api_base: ${upstreamOrigin}/v1
`);
  cleanup.add('router config', () => rmSync(dirname(routerConfig), { recursive: true, force: true }));
  const stack = await Stack.start('floor', {
    routerConfig,
    redisUrl: redis.url,
    env: { LOG_LEVEL: 'warn' },
    workerEnv: { WORKER_CONCURRENCY: '64' },
  });
  cleanup.add('stack', () => stack.stop());
  const key = await stack.createKey({ name: 'bench', max_parallel_requests: 100_000 });

  const floorPort = await freePort();
  const floorGateway = await startFloorProcess(
    'floor-gateway.js',
    [String(floorPort), redis.url, `${stack.prefix}-floor`],
    cleanup,
  );
  const floorWorker = await startFloorProcess(
    'floor-worker.js',
    [redis.url, `${stack.prefix}-floor`, upstreamOrigin, '/v1/completions'],
    cleanup,
  );

  const systems: System[] = [
    {
      name: 'floor',
      baseUrl: `http://127.0.0.1:${floorPort}`,
      pids: { gateway: floorGateway.child.pid ?? 0, worker: floorWorker.child.pid ?? 0 },
      target: { path: '/v1/completions', headers: {}, body: { model: 'fake-model', ...BODY } },
    },
    {
      name: 'aqueduct',
      baseUrl: stack.baseUrl,
      pids: { gateway: stack.gateway.child.pid ?? 0, worker: stack.workers[0]?.child.pid ?? 0 },
      target: {
        path: '/v1/completions',
        headers: { authorization: `Bearer ${key}` },
        body: { model: 'bench', ...BODY },
      },
    },
  ];

  const rows: Row[] = [];
  for (let round = 1; round <= ROUNDS; round++) {
    for (const system of systems) {
      const meter = new CpuMeter(system.pids, stack.redis);
      for (const c of CONCURRENCIES) {
        const row = await measure(system, meter, c, round);
        console.error(
          `round ${round} ${system.name} c=${c}: ${row.result.rps.toFixed(0)} req/s, ${f2(row.cpuMsPerRequest.total)} ms CPU/request`,
        );
        rows.push(row);
      }
    }
  }

  const failed = rows.filter((r) => r.result.ok < r.result.requests);
  console.log(
    `\nAqueduct vs the floor of its pipeline (bench/floor/): non-stream completions, ${DURATION_MS} ms per phase, ${ROUNDS} round(s)`,
  );
  console.log(
    table([
      [
        'system',
        'round',
        'c',
        'req/s',
        'p50 ms',
        'p99 ms',
        'CPU ms/req gw',
        'worker',
        'redis',
        'total',
        'RSS MiB gw',
        'worker',
        'loadgen CPU %',
      ],
      ...rows.map((r) => [
        r.system,
        String(r.round),
        String(r.concurrency),
        r.result.rps.toFixed(0),
        f2(r.result.latencyMs.p50),
        f2(r.result.latencyMs.p99),
        f2(r.cpuMsPerRequest.gateway),
        f2(r.cpuMsPerRequest.worker),
        f2(r.cpuMsPerRequest.redis),
        f2(r.cpuMsPerRequest.total),
        r.rssMiB.gateway.toFixed(0),
        r.rssMiB.worker.toFixed(0),
        r.benchCpuPct.toFixed(0),
      ]),
    ]),
  );
  const avg = (system: string, c: number, pick: (r: Row) => number) =>
    mean(rows.filter((r) => r.system === system && r.concurrency === c).map(pick));
  const ratio = (c: number, pick: (r: Row) => number) => avg('aqueduct', c, pick) / avg('floor', c, pick);
  console.log(
    `\nratio aqueduct/floor (means over rounds): c16 req/s ${f2(ratio(16, (r) => r.result.rps))}, ` +
      `c16 CPU/request ${f2(ratio(16, (r) => r.cpuMsPerRequest.total))}, ` +
      `c1 p50 ${f2(ratio(1, (r) => r.result.latencyMs.p50))} ` +
      `(floor c16 ${avg('floor', 16, (r) => r.result.rps).toFixed(0)} req/s at ${f2(avg('floor', 16, (r) => r.cpuMsPerRequest.total))} ms CPU/request; ` +
      `c1 p50 ${f2(avg('floor', 1, (r) => r.result.latencyMs.p50))} ms)`,
  );
  if (failed.length > 0) {
    for (const r of failed) {
      console.log(`FAILURES ${r.system} c=${r.concurrency}: ${JSON.stringify([...r.result.failures.values()])}`);
    }
    throw new Error('requests failed: the figures above do not measure what they say');
  }
}

runBench('bench:floor', WATCHDOG_MS, main);
