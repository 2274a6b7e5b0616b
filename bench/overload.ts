import { rmSync } from 'node:fs';
import { dirname } from 'node:path';
import { performance } from 'node:perf_hooks';
import { Pool } from 'undici';
import { type FakeUpstream, startFakeUpstream } from '../test/support/fake-upstream';
import { upstreamDeployment, writeModelList } from '../test/support/router-config';
import { Stack } from '../test/support/stack';
import { percentiles } from './load';
import { table } from './relay-transport';
import { type Cleanup, intEnv, runBench } from './harness';

/**
 * `npm run bench:overload`: the scheduler under overload (issue 12). A fake upstream behind a
 * deployment with a fixed number of slots (`max_parallel_requests`, each request holding its
 * slot SERVICE_MS), 10 normal-priority tokens offering LOAD × its capacity in open loop
 * (Poisson arrivals, so the offered load does not bend to the latency), one of them HEAVY
 * times the rate of each of the others, plus a `high` token at a low rate and a probe of
 * another, uncapped model. Reports goodput, refusals (503 queue_timeout, 429), per-token
 * p50/p99 wait (from `x-aqueduct-queue-ms`), Jain's fairness index over what the 9
 * well-behaved tokens got served, and the high-priority p99 wait.
 */

const DURATION_MS = intEnv('BENCH_OVERLOAD_DURATION_MS', 15_000, 2_000, 60_000);
/** Arrivals in the first WARMUP_MS fill the queue; they are sent but left out of the figures. */
const WARMUP_MS = intEnv('BENCH_OVERLOAD_WARMUP_MS', 2_000, 0, 10_000);
const SLOTS = intEnv('BENCH_OVERLOAD_SLOTS', 4, 1, 256);
const SERVICE_MS = intEnv('BENCH_OVERLOAD_SERVICE_MS', 100, 5, 10_000);
/** Offered load of the 10 normal tokens, in percent of the deployment's capacity. */
const LOAD_PCT = intEnv('BENCH_OVERLOAD_LOAD_PCT', 300, 10, 2_000);
const HEAVY = intEnv('BENCH_OVERLOAD_HEAVY_FACTOR', 10, 1, 100);
/** Requests per second of the `high` token (0: none). */
const HIGH_RPS = intEnv('BENCH_OVERLOAD_HIGH_RPS', 2, 0, 1_000);
/** Requests per second of the probe on an uncapped model (0: none). */
const FREE_RPS = intEnv('BENCH_OVERLOAD_FREE_RPS', 5, 0, 1_000);
const MAX_WAIT_MS = intEnv('BENCH_OVERLOAD_MAX_WAIT_MS', 2_000, 100, 60_000);
const WORKERS = intEnv('BENCH_OVERLOAD_WORKERS', 2, 1, 16);
const WORKER_CONCURRENCY = intEnv('BENCH_OVERLOAD_WORKER_CONCURRENCY', 16, 1, 1_024);
const TOKENS = 10;
/** Hard stop for everything, cleanup included. */
const WATCHDOG_MS = DURATION_MS + MAX_WAIT_MS + 90_000;

const CAPACITY_RPS = (SLOTS * 1000) / SERVICE_MS;
/** Rate of each light token: 9 light + 1 heavy (HEAVY × light) = LOAD × capacity. */
const LIGHT_RPS = ((LOAD_PCT / 100) * CAPACITY_RPS) / (TOKENS - 1 + HEAVY);

interface Client {
  label: string;
  priority: 'high' | 'normal' | 'low';
  model: 'capped' | 'free';
  rps: number;
  key: string;
  /** One of the 9 well-behaved tokens (the fairness index is over these). */
  light: boolean;
}

interface Outcome {
  client: Client;
  /** ms since the start of the run. */
  sentAt: number;
  endedAt: number;
  status: number;
  code: string | null;
  /** `x-aqueduct-queue-ms`, NaN when absent. */
  queueMs: number;
  ok: boolean;
}

/** Jain's fairness index: (Σx)² / (n·Σx²), 1 when all equal, 1/n when one gets everything. */
function jain(xs: number[]): number {
  const sum = xs.reduce((a, b) => a + b, 0);
  const squares = xs.reduce((a, b) => a + b * b, 0);
  return xs.length === 0 || squares === 0 ? Number.NaN : (sum * sum) / (xs.length * squares);
}

/** Exponential inter-arrival time for a Poisson process of `rps`. */
function nextGapMs(rps: number): number {
  return (-Math.log(1 - Math.random()) * 1000) / rps;
}

async function send(pool: Pool, client: Client, t0: number, outcomes: Outcome[], i: number): Promise<void> {
  const sentAt = performance.now() - t0;
  const body = {
    model: client.model,
    prompt: `${client.label} request ${i}`,
    max_tokens: 8,
    fake_ttft_ms: client.model === 'capped' ? SERVICE_MS : 0,
  };
  let status = 0;
  let code: string | null;
  let queueMs = Number.NaN;
  let ok = false;
  try {
    const res = await pool.request({
      path: '/v1/completions',
      method: 'POST',
      headers: { authorization: `Bearer ${client.key}`, 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
    status = res.statusCode;
    const header = res.headers['x-aqueduct-queue-ms'];
    const raw = Array.isArray(header) ? header[0] : header;
    queueMs = raw !== undefined && /^\d+$/.test(raw) ? Number(raw) : Number.NaN;
    const text = await res.body.text();
    const parsed = JSON.parse(text) as { choices?: { text?: unknown }[]; error?: { code?: string | null } };
    ok = status === 200 && typeof parsed.choices?.[0]?.text === 'string';
    code = parsed.error?.code ?? null;
  } catch (err) {
    code = (err as Error).message.slice(0, 80);
  }
  outcomes.push({ client, sentAt, endedAt: performance.now() - t0, status, code, queueMs, ok });
}

/** Open loop: Poisson arrivals at `client.rps` until `untilMs`, each request on its own. */
async function offer(pool: Pool, client: Client, t0: number, untilMs: number, outcomes: Outcome[]): Promise<void> {
  const inFlight: Promise<void>[] = [];
  let at = nextGapMs(client.rps);
  for (let i = 0; at < untilMs; i++) {
    const delay = at - (performance.now() - t0);
    if (delay > 0) {
      await new Promise((r) => setTimeout(r, delay));
    }
    inFlight.push(send(pool, client, t0, outcomes, i));
    at += nextGapMs(client.rps);
  }
  await Promise.all(inFlight);
}

const fmt = (n: number, digits = 0) => (Number.isFinite(n) ? n.toFixed(digits) : 'n/a');

interface ClientFigures {
  label: string;
  priority: string;
  model: string;
  offeredRps: number;
  sent: number;
  served: number;
  queueTimeout: number;
  tooMany: number;
  other: number;
  servedRps: number;
  shareOfGoodput: number;
  waitMs: { p50: number; p99: number; count: number };
  latencyMs: { p50: number; p99: number };
}

function figures(client: Client, all: Outcome[], windowS: number, goodput: number): ClientFigures {
  const mine = all.filter((o) => o.client === client);
  const served = mine.filter((o) => o.ok);
  const waits = percentiles(served.map((o) => o.queueMs).filter(Number.isFinite));
  const latencies = percentiles(served.map((o) => o.endedAt - o.sentAt));
  const queueTimeout = mine.filter((o) => o.status === 503 && o.code === 'queue_timeout').length;
  const tooMany = mine.filter((o) => o.status === 429).length;
  return {
    label: client.label,
    priority: client.priority,
    model: client.model,
    offeredRps: client.rps,
    sent: mine.length,
    served: served.length,
    queueTimeout,
    tooMany,
    other: mine.length - served.length - queueTimeout - tooMany,
    servedRps: served.length / windowS,
    shareOfGoodput: client.model === 'capped' ? served.length / windowS / goodput : Number.NaN,
    waitMs: { p50: waits.p50, p99: waits.p99, count: waits.count },
    latencyMs: { p50: latencies.p50, p99: latencies.p99 },
  };
}

async function main(cleanup: Cleanup): Promise<void> {
  // Two upstreams, so that the capped one's in-flight count is the deployment's alone.
  const upstream: FakeUpstream = await startFakeUpstream({ record: false });
  cleanup.add('fake upstream', () => upstream.close());
  const freeUpstream: FakeUpstream = await startFakeUpstream({ record: false });
  cleanup.add('fake upstream (other model)', () => freeUpstream.close());
  const routerConfig = writeModelList(
    upstreamDeployment('capped', upstream.url, { max_parallel_requests: SLOTS, extra_body_allowed: ['fake_ttft_ms'] }),
    upstreamDeployment('free', freeUpstream.url, { extra_body_allowed: ['fake_ttft_ms'] }),
  );
  cleanup.add('router config', () => rmSync(dirname(routerConfig), { recursive: true, force: true }));

  const stack = await Stack.start('bench-overload', {
    routerConfig,
    workers: WORKERS,
    env: { LOG_LEVEL: 'warn', AQUEDUCT_MAX_QUEUE_WAIT_MS: String(MAX_WAIT_MS) },
    workerEnv: { WORKER_CONCURRENCY: String(WORKER_CONCURRENCY) },
  });
  cleanup.add('stack', () => stack.stop());

  const clients: Client[] = [];
  for (let t = 0; t < TOKENS; t++) {
    const heavy = t === 0;
    const label = heavy ? `heavy (${HEAVY}x)` : `light ${t}`;
    const { key } = await stack.tokens.create({ name: label });
    clients.push({
      label,
      priority: 'normal',
      model: 'capped',
      rps: heavy ? HEAVY * LIGHT_RPS : LIGHT_RPS,
      key,
      light: !heavy,
    });
  }
  if (HIGH_RPS > 0) {
    const { key } = await stack.tokens.create({ name: 'high', priority: 'high' });
    clients.push({ label: 'high', priority: 'high', model: 'capped', rps: HIGH_RPS, key, light: false });
  }
  if (FREE_RPS > 0) {
    const { key } = await stack.tokens.create({ name: 'free model' });
    clients.push({ label: 'other model', priority: 'normal', model: 'free', rps: FREE_RPS, key, light: false });
  }
  const offered = clients.filter((c) => c.model === 'capped').reduce((s, c) => s + c.rps, 0);
  console.log(
    `stack up: prefix ${stack.prefix}, ${WORKERS} workers x ${WORKER_CONCURRENCY}; deployment: ${SLOTS} slots x ${SERVICE_MS} ms = ` +
      `${fmt(CAPACITY_RPS, 1)} req/s; offered ${fmt(offered, 1)} req/s (${fmt((100 * offered) / CAPACITY_RPS)}%) ` +
      `for ${DURATION_MS} ms, wait limit ${MAX_WAIT_MS} ms`,
  );

  const pool = new Pool(stack.baseUrl, {
    connections: 4_096,
    pipelining: 1,
    keepAliveTimeout: 30_000,
    headersTimeout: MAX_WAIT_MS + 30_000,
    bodyTimeout: MAX_WAIT_MS + 30_000,
  });
  cleanup.add('http pool', () => pool.close());

  const outcomes: Outcome[] = [];
  const t0 = performance.now();
  await Promise.all(clients.map((c) => offer(pool, c, t0, DURATION_MS, outcomes)));
  const drainedMs = performance.now() - t0;

  // The measured window: arrivals after the warm-up; goodput: capped completions in that window.
  const windowS = (DURATION_MS - WARMUP_MS) / 1000;
  const measured = outcomes.filter((o) => o.sentAt >= WARMUP_MS);
  const goodput =
    outcomes.filter((o) => o.ok && o.client.model === 'capped' && o.endedAt >= WARMUP_MS && o.endedAt < DURATION_MS)
      .length / windowS;
  const rows = clients.map((c) => figures(c, measured, windowS, goodput));
  const lights = rows.filter((_, i) => clients[i]?.light === true);
  const fairness = jain(lights.map((r) => r.served));
  const fairnessOfShare = jain(lights.map((r) => (r.sent === 0 ? 0 : r.served / r.sent)));
  const high = rows.find((r) => r.priority === 'high');
  const capped = measured.filter((o) => o.client.model === 'capped');
  const refused503 = capped.filter((o) => o.status === 503 && o.code === 'queue_timeout').length;
  const refused429 = capped.filter((o) => o.status === 429).length;
  const otherFailures = new Map<string, number>();
  for (const o of measured.filter(
    (x) => !x.ok && !(x.status === 503 && x.code === 'queue_timeout') && x.status !== 429,
  )) {
    const k = `${o.status} ${o.code ?? ''}`;
    otherFailures.set(k, (otherFailures.get(k) ?? 0) + 1);
  }

  console.log(
    `\nOverload: ${fmt(windowS, 1)} s measured after ${WARMUP_MS} ms warm-up (${measured.length} requests), run drained after ${fmt(drainedMs)} ms`,
  );
  console.log(
    table([
      [
        'token',
        'priority',
        'model',
        'offered/s',
        'sent',
        'served',
        '503 queue_timeout',
        '429',
        'other',
        'served/s',
        'share of goodput',
        'wait p50 ms',
        'wait p99 ms',
        'latency p50 ms',
        'latency p99 ms',
      ],
      ...rows.map((r) => [
        r.label,
        r.priority,
        r.model,
        fmt(r.offeredRps, 1),
        String(r.sent),
        String(r.served),
        String(r.queueTimeout),
        String(r.tooMany),
        String(r.other),
        fmt(r.servedRps, 2),
        Number.isFinite(r.shareOfGoodput) ? `${fmt(100 * r.shareOfGoodput, 1)}%` : '',
        fmt(r.waitMs.p50),
        fmt(r.waitMs.p99),
        fmt(r.latencyMs.p50),
        fmt(r.latencyMs.p99),
      ]),
    ]),
  );
  const summary: string[][] = [
    ['figure', 'value'],
    ['deployment capacity req/s', fmt(CAPACITY_RPS, 1)],
    ['goodput req/s (capped, served)', `${fmt(goodput, 2)} (${fmt((100 * goodput) / CAPACITY_RPS, 1)}% of capacity)`],
    ['refused 503 queue_timeout', String(refused503)],
    ['refused 429', String(refused429)],
    ['other failures', [...otherFailures].map(([k, n]) => `${n} x ${k}`).join(', ') || '0'],
    ["Jain's index, served by the 9 light tokens", fmt(fairness, 3)],
    ["Jain's index, served/sent of the 9 light tokens", fmt(fairnessOfShare, 3)],
    ['heavy token share of goodput (fair: 1/10)', `${fmt(100 * (rows[0]?.shareOfGoodput ?? Number.NaN), 1)}%`],
    ['high-priority wait p99 ms', high === undefined ? 'n/a' : fmt(high.waitMs.p99)],
    ['high-priority served / sent', high === undefined ? 'n/a' : `${high.served}/${high.sent}`],
    ['upstream max in flight (slots)', `${upstream.maxInFlight()} (${SLOTS})`],
    ['aim: Jain >= 0.95 (issue 12)', fairness >= 0.95 ? 'met' : 'MISSED'],
    ['aim: never more than the slots upstream', upstream.maxInFlight() <= SLOTS ? 'met' : 'MISSED'],
  ];
  const free = rows.find((r) => r.model === 'free');
  if (free !== undefined) {
    summary.push(['other model latency p99 ms', fmt(free.latencyMs.p99)]);
  }
  const noHeader = capped.filter((o) => (o.ok || o.status === 503) && !Number.isFinite(o.queueMs)).length;
  if (noHeader > 0) {
    summary.push(['responses without x-aqueduct-queue-ms', String(noHeader)]);
  }
  console.log('');
  console.log(table(summary));

  const gatewayLog = stack.gateway.output().trim();
  const lines = gatewayLog.split('\n').filter((l) => /"level":(40|50|60)\b|\b(WARN|ERROR|FATAL)\b/.test(l));
  if (lines.length > 0) {
    console.log(`\ngateway warnings/errors (${lines.length}, last ${Math.min(10, lines.length)}):`);
    console.log(lines.slice(-10).join('\n'));
  }
  console.log(
    JSON.stringify({
      bench: 'aqueduct-overload',
      config: {
        durationMs: DURATION_MS,
        warmupMs: WARMUP_MS,
        slots: SLOTS,
        serviceMs: SERVICE_MS,
        loadPct: LOAD_PCT,
        heavyFactor: HEAVY,
        highRps: HIGH_RPS,
        freeRps: FREE_RPS,
        maxWaitMs: MAX_WAIT_MS,
        workers: WORKERS,
        workerConcurrency: WORKER_CONCURRENCY,
      },
      capacityRps: CAPACITY_RPS,
      goodputRps: goodput,
      refused: { queueTimeout: refused503, tooManyRequests: refused429, other: Object.fromEntries(otherFailures) },
      jainLight: fairness,
      jainLightServedShare: fairnessOfShare,
      highWaitP99Ms: high?.waitMs.p99 ?? null,
      upstreamMaxInFlight: upstream.maxInFlight(),
      tokens: rows,
    }),
  );
}

runBench('bench:overload', WATCHDOG_MS, main);
