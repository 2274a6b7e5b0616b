import { rmSync } from 'node:fs';
import { dirname } from 'node:path';
import { startFakeUpstream } from '../test/support/fake-upstream';
import { PrivateRedis } from '../test/support/private-redis';
import { RedisCluster } from '../test/support/redis-cluster';
import { upstreamDeployment, writeModelList } from '../test/support/router-config';
import { Stack } from '../test/support/stack';
import { CpuMeter } from './cpu';
import { type Cleanup, f2, intEnv, runBench } from './harness';
import { createPool, runStream, type StreamResult } from './load';
import { table } from './relay-transport';

/**
 * `npm run bench:scale-out` (issue 14): streamed completions through one gateway and 1, 2 and
 * 4 workers, on one Redis and on a three-master Redis Cluster, against a model server of fixed
 * capacity (SLOTS requests at once, the rest wait at the server, as vLLM's `--max-num-seqs`
 * makes them). Each worker serves WORKER_CONCURRENCY jobs, so with few workers the workers
 * bound the throughput and with enough of them the backend does: streams/s should follow the
 * backend's busy slots, up to SLOTS × 1000 / service time. MODELS
 * models (one queue each: on the cluster, on different shards) and TOKENS tokens (limits and
 * usage: on different shards too) share the backend, as tenants of one deployment would.
 */

const DURATION_MS = intEnv('BENCH_SCALE_DURATION_MS', 8_000, 1_000, 60_000);
const WARMUP_MS = intEnv('BENCH_SCALE_WARMUP_MS', 1_500, 0, 10_000);
const SLOTS = intEnv('BENCH_SCALE_SLOTS', 24, 1, 1_024);
const WORKER_CONCURRENCY = intEnv('BENCH_SCALE_WORKER_CONCURRENCY', 8, 1, 1_024);
/** Clients in closed loop: more than the backend holds, so the line is never empty. */
const CLIENTS = intEnv('BENCH_SCALE_CLIENTS', 48, 1, 2_048);
const ITL_MS = intEnv('BENCH_SCALE_ITL_MS', 6, 0, 1_000);
const MODELS = intEnv('BENCH_SCALE_MODELS', 4, 1, 16);
const TOKENS = intEnv('BENCH_SCALE_TOKENS', 8, 1, 64);
/** 0: one Redis only. */
const CLUSTER = intEnv('BENCH_SCALE_CLUSTER', 1, 0, 1) === 1;
const WORKER_COUNTS = (process.env.BENCH_SCALE_WORKERS ?? '1,2,4').split(',').map(Number);
if (WORKER_COUNTS.some((n) => !Number.isInteger(n) || n < 1 || n > 16)) {
  throw new Error('BENCH_SCALE_WORKERS must list worker counts between 1 and 16, e.g. 1,2,4');
}
const WATCHDOG_MS = (CLUSTER ? 2 : 1) * WORKER_COUNTS.length * (DURATION_MS + WARMUP_MS + 40_000) + 30_000;

/** 15 words: the fake upstream streams " echo:" and one token per word, ITL_MS apart. */
const PROMPT = 'one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen';
const TOKENS_PER_STREAM = 16;
const SERVICE_MS = TOKENS_PER_STREAM * ITL_MS;

interface Row {
  redis: string;
  workers: number;
  result: StreamResult;
  rps: number;
  /** Requests the backend served at once, sampled every 20 ms of the measured run. */
  busy: { mean: number; max: number };
  /** CPU ms per stream: gateway, workers together, Redis (all nodes). */
  cpu: { gateway: number; workers: number; redis: number };
}

async function measure(stack: Stack, backendBusy: () => number, redis: string, workers: number): Promise<Row> {
  const keys = await Promise.all(
    Array.from({ length: TOKENS }, (_, i) =>
      stack.createKey({ name: `scale-${i}`, max_parallel_requests: CLIENTS, requests_per_minute: 1_000_000 }),
    ),
  );
  const pool = createPool(stack.baseUrl, CLIENTS);
  // Every client has its own token and model (round robin), so queues and limits spread.
  const targets = Array.from({ length: CLIENTS }, (_, c) => ({
    path: '/v1/completions',
    headers: { authorization: `Bearer ${keys[c % TOKENS] ?? ''}` },
    body: { model: `m${c % MODELS}`, prompt: PROMPT, fake_itl_ms: ITL_MS },
  }));
  const run = (durationMs: number) => runStream(pool, targets, CLIENTS, durationMs);
  try {
    await run(WARMUP_MS);
    const pids: Record<string, number> = { gateway: stack.gateway.child.pid ?? 0 };
    stack.workers.forEach((w, i) => (pids[`worker${i}`] = w.child.pid ?? 0));
    const meter = new CpuMeter(pids, stack.redis);
    const samples: number[] = [];
    const sampler = setInterval(() => samples.push(backendBusy()), 20);
    const before = await meter.sample();
    const result = await run(DURATION_MS);
    const used = CpuMeter.delta(before, await meter.sample());
    clearInterval(sampler);
    const rps = (result.ok * 1000) / result.elapsedMs;
    const perStream = (ms: number | undefined) => (result.ok === 0 || ms === undefined ? Number.NaN : ms / result.ok);
    const workerMs = stack.workers.reduce((sum, _, i) => sum + (used[`worker${i}`] ?? 0), 0);
    return {
      redis,
      workers,
      result,
      rps,
      busy: { mean: samples.reduce((a, b) => a + b, 0) / Math.max(1, samples.length), max: Math.max(0, ...samples) },
      cpu: { gateway: perStream(used.gateway), workers: perStream(workerMs), redis: perStream(used.redis) },
    };
  } finally {
    await pool.close();
  }
}

async function topology(
  cleanup: Cleanup,
  label: string,
  redisUrl: string,
  cluster: boolean,
  routerConfig: string,
  backendBusy: () => number,
): Promise<Row[]> {
  const rows: Row[] = [];
  for (const workers of WORKER_COUNTS) {
    const stack = await Stack.start(cluster ? 'bench-scale-cluster' : 'bench-scale', {
      redisUrl,
      cluster,
      routerConfig,
      workers,
      env: { LOG_LEVEL: 'warn', AQUEDUCT_HEARTBEAT_MS: '2000' },
      workerEnv: { WORKER_CONCURRENCY: String(WORKER_CONCURRENCY), WORKER_METRICS_PORT: '0' },
    });
    let stopping: Promise<void> | undefined;
    const stop = () => (stopping ??= stack.stop());
    cleanup.add(`stack ${label} ${workers}`, stop);
    try {
      const row = await measure(stack, backendBusy, label, workers);
      rows.push(row);
      console.log(
        `${label}, ${workers} worker(s): ${row.rps.toFixed(0)} streams/s, backend busy ${row.busy.mean.toFixed(1)}`,
      );
    } finally {
      await stop();
    }
  }
  return rows;
}

async function main(cleanup: Cleanup): Promise<void> {
  const upstream = await startFakeUpstream({ record: false, maxParallel: SLOTS });
  cleanup.add('upstream', () => upstream.close());
  const busy = () => upstream.inFlight();
  // Each model's capacity is its share of the backend, so Aqueduct queues what the backend cannot
  // take at once (README, Scheduling: set max_parallel_requests to what the server serves).
  const perModel = Math.max(1, Math.floor(SLOTS / MODELS));
  const routerConfig = writeModelList(
    ...Array.from({ length: MODELS }, (_, m) =>
      upstreamDeployment(`m${m}`, upstream.url, { max_parallel_requests: perModel }),
    ),
  );
  cleanup.add('router config', () => rmSync(dirname(routerConfig), { recursive: true, force: true }));
  console.log(
    `scale-out: backend ${SLOTS} slots (${perModel} per model x ${MODELS} models), service ${SERVICE_MS} ms, ` +
      `${CLIENTS} clients over ${TOKENS} tokens, WORKER_CONCURRENCY ${WORKER_CONCURRENCY}, ${DURATION_MS} ms per row`,
  );

  const single = await PrivateRedis.start();
  cleanup.add('redis', () => single.stop());
  const rows = await topology(cleanup, 'one Redis', single.url, false, routerConfig, busy);
  await single.stop();
  if (CLUSTER) {
    const cluster = await RedisCluster.start({ masters: 3 });
    cleanup.add('cluster', () => cluster.stop());
    rows.push(...(await topology(cleanup, 'cluster (3 masters)', cluster.url, true, routerConfig, busy)));
    await cluster.stop();
  }

  const f0 = (n: number) => (Number.isFinite(n) ? n.toFixed(0) : 'n/a');
  console.log(
    table([
      [
        'redis',
        'workers',
        'streams/s',
        `backend busy (of ${SLOTS}) mean | max`,
        'ttft p50 ms',
        'ttft p99 ms',
        'failed',
        'cpu ms/stream gw | wk | redis',
      ],
      ...rows.map((r) => [
        r.redis,
        String(r.workers),
        f0(r.rps),
        `${r.busy.mean.toFixed(1)} | ${r.busy.max}`,
        f0(r.result.ttftMs.p50),
        f0(r.result.ttftMs.p99),
        String(r.result.streams - r.result.ok),
        `${f2(r.cpu.gateway)} | ${f2(r.cpu.workers)} | ${f2(r.cpu.redis)}`,
      ]),
    ]),
  );
  for (const r of rows) {
    for (const f of r.result.failures.values()) {
      console.log(`  ${r.redis}, ${r.workers} worker(s): ${f.count} x ${f.status}: ${f.sample}`);
    }
  }
}

runBench('scale-out', WATCHDOG_MS, main);
