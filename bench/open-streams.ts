import { type ChildProcess, fork } from 'node:child_process';
import { readFileSync, rmSync } from 'node:fs';
import { dirname } from 'node:path';
import { monitorEventLoopDelay, performance } from 'node:perf_hooks';
import type { IncomingHttpHeaders } from 'node:http';
import { Client, type Dispatcher } from 'undici';
import { startFakeUpstream } from '../test/support/fake-upstream';
import { upstreamDeployment, writeModelList } from '../test/support/router-config';
import { Stack } from '../test/support/stack';
import { CpuMeter, type CpuSnapshot, rssMiB } from './cpu';
import { Cleanup, f1, f2, intEnv, runBench } from './harness';
import { table } from './relay-transport';

/**
 * The "open streams" scenario of `npm run bench`: one gateway and one worker hold N (default
 * 5 000) concurrent streamed completions of 64 tokens, 50 ms apart (20 tokens/s each, so
 * 100 000 chunks/s at 5 000 streams). Targets: no stream dropped, and the gap between two
 * chunks as the client sees it at most 10 ms longer than the upstream's 50 ms at p99. Also
 * reported: TTFT, the peak of streams open at once, RSS of gateway and worker before, at the
 * peak and after (so gateway memory per open stream), and CPU of every process.
 *
 * The same N streams first go straight to the fake upstream (the "direct" column): on a small
 * machine the client and the upstream have jitter of their own, and that baseline says how
 * much of the added gap is the gateway's. The client does as little as it can per chunk: raw
 * undici dispatch, a count of SSE event ends per read and one timestamp per read; the JSON of
 * every event is parsed, and the text compared, once the phase is over.
 */

export const OPEN_STREAMS = intEnv('BENCH_OPEN_STREAMS', 5_000, 0, 15_000);
/**
 * Streams are started evenly over this window rather than all at once: a burst of 5 000
 * connects overflows listen backlogs (4 096 at most: net.core.somaxconn) and costs seconds of
 * SYN retransmits (1 s, 3 s, 7 s late), and streams started together emit their tokens in
 * lock-step, 5 000 chunks every 50 ms instead of a steady flow. Kept below a stream's life
 * (63 × 50 ms) so that every stream is open at once at the end of the ramp.
 */
const RAMP_MS = intEnv('BENCH_OPEN_STREAMS_RAMP_MS', 2_000, 0, 3_000);
const DIRECT = intEnv('BENCH_OPEN_STREAMS_DIRECT', 1, 0, 1) === 1;
/** When set, gateway and worker run with `--cpu-prof` and write their profiles there at exit. */
const PROF_DIR = process.env.BENCH_OPEN_STREAMS_PROF_DIR ?? '';

const TOKENS = 64;
const ITL_MS = 50;
/** A stream still open this long after the ramp is aborted and counted as dropped (`timeout`). */
const PHASE_GRACE_MS = 60_000;
/** Timestamps kept per stream: 64 text events, the `[DONE]`, and room for keep-alive comments. */
const EVENT_SLOTS = TOKENS + 16;
const WARMUP_STREAMS = 200;

/** What run.ts must add to its watchdog for this scenario: stack start/stop, warm-up, two phases. */
export const OPEN_STREAMS_BUDGET_MS =
  OPEN_STREAMS === 0 ? 0 : 60_000 + (DIRECT ? 2 : 1) * (RAMP_MS + PHASE_GRACE_MS) + 2 * TOKENS * ITL_MS;

/** 63 words: the fake upstream answers " echo:" + one token per word = 64 tokens. Word 0 names the stream. */
const TAIL_WORDS = Array.from({ length: TOKENS - 2 }, (_, i) => `w${i + 1}`).join(' ');
const expectedText = (i: number) => ` echo: s${i} ${TAIL_WORDS}`;

export interface Quantiles {
  p50: number;
  p99: number;
  max: number;
  count: number;
}

function quantiles(values: Float64Array): Quantiles {
  const sorted = values.slice().sort();
  const rank = (p: number) => sorted[Math.max(0, Math.ceil((p / 100) * sorted.length) - 1)] ?? Number.NaN;
  return { p50: rank(50), p99: rank(99), max: sorted[sorted.length - 1] ?? Number.NaN, count: sorted.length };
}

/** The hard limit on open files: Node raises its soft limit to it at start, and children inherit it. */
function maxOpenFiles(): number {
  const m = /^Max open files\s+\d+\s+(\d+|unlimited)/m.exec(readFileSync('/proc/self/limits', 'utf8'));
  return m?.[1] === undefined || m[1] === 'unlimited' ? Infinity : Number(m[1]);
}

export interface RssFigures {
  idle: number;
  peak: number;
  after: number;
}

export interface PhaseResult {
  side: 'direct' | 'gateway';
  streams: number;
  ok: number;
  /** Text chunks delivered, over all streams: what CPU per chunk is divided by. */
  chunks: number;
  /** Every stream that did not end with exactly its 64 tokens of text and `[DONE]`, by kind. */
  dropped: Record<string, { count: number; sample: string }>;
  /** Client-side gap between consecutive text chunks of a stream, minus the upstream's 50 ms. */
  addedGapMs: Quantiles;
  ttftMs: Quantiles;
  /** The gateway's `x-aqueduct-queue-ms`: the part of TTFT spent waiting for a worker to take the job. */
  queueMs: Quantiles;
  /** Streams open at once (200 received, not ended) at the highest point, and when (ms after the start). */
  peakOpen: number;
  peakOpenAtMs: number;
  elapsedMs: number;
  /** CPU ms of each process over the phase. */
  cpuMs: CpuSnapshot;
  rssMiB: Record<string, RssFigures>;
  /** The client's own event-loop delay p99: if high, the client (not the gateway) adds gaps. */
  clientLoopDelayP99Ms: number;
}

export interface OpenStreamsResult {
  streams: number;
  rampMs: number;
  direct?: PhaseResult;
  gateway: PhaseResult;
  /** (peak − idle gateway RSS) / peak open streams. */
  gatewayMiBPerStream: number;
  pass: boolean;
}

/** One stream's raw arrivals; parsing and checking wait until the phase is over. */
class StreamRecord implements Dispatcher.DispatchHandler {
  status = 0;
  chunks: Buffer[] = [];
  events = 0;
  /** Whether the last byte seen was '\n': an event boundary ("\n\n") may straddle two reads. */
  private lastWasNl = false;
  controller: Dispatcher.DispatchController | undefined;
  t0 = 0;
  queueMs = Number.NaN;
  outcome: 'pending' | 'ended' | 'error' = 'pending';
  error = '';

  constructor(
    readonly index: number,
    private readonly phase: PhaseState,
  ) {}

  onRequestStart(controller: Dispatcher.DispatchController): void {
    this.controller = controller;
  }

  onResponseStart(_c: Dispatcher.DispatchController, statusCode: number, headers: IncomingHttpHeaders): void {
    this.status = statusCode;
    // The gateway says how long the job waited for a worker: TTFT split into queue and the rest.
    const queueMs = headers['x-aqueduct-queue-ms'];
    this.queueMs = typeof queueMs === 'string' ? Number(queueMs) : Number.NaN;
    if (statusCode === 200) {
      this.phase.opened();
    }
  }

  onResponseData(_c: Dispatcher.DispatchController, chunk: Buffer): void {
    this.chunks.push(chunk);
    if (this.status !== 200) {
      return;
    }
    // Count SSE events ("\n\n") and stamp each with this read's arrival time; nothing is parsed here.
    const now = performance.now();
    const times = this.phase.times;
    const base = this.index * EVENT_SLOTS;
    let from = 0;
    let nl: number;
    while ((nl = chunk.indexOf(10, from)) !== -1) {
      if (nl === 0 ? this.lastWasNl : chunk[nl - 1] === 10) {
        if (this.events < EVENT_SLOTS) {
          times[base + this.events] = now;
        }
        this.events += 1;
      }
      from = nl + 1;
    }
    this.lastWasNl = chunk[chunk.length - 1] === 10;
  }

  onResponseEnd(): void {
    this.finish('ended', '');
  }

  onResponseError(_c: Dispatcher.DispatchController, err: Error): void {
    this.finish('error', err.message);
  }

  private finish(outcome: 'ended' | 'error', error: string): void {
    if (this.outcome !== 'pending') {
      return;
    }
    this.outcome = outcome;
    this.error = error;
    this.phase.closed(this.status === 200);
  }
}

/** Counters shared by the streams of one phase. */
class PhaseState {
  readonly times: Float64Array;
  open = 0;
  peakOpen = 0;
  peakOpenAt = 0;
  done = 0;
  readonly start = performance.now();
  private resolveAll: () => void = () => undefined;
  readonly allDone = new Promise<void>((r) => (this.resolveAll = r));

  constructor(readonly streams: number) {
    this.times = new Float64Array(streams * EVENT_SLOTS);
  }

  opened(): void {
    this.open += 1;
    if (this.open > this.peakOpen) {
      this.peakOpen = this.open;
      this.peakOpenAt = performance.now() - this.start;
    }
  }

  closed(wasOpen: boolean): void {
    if (wasOpen) {
      this.open -= 1;
    }
    this.done += 1;
    if (this.done === this.streams) {
      this.resolveAll();
    }
  }
}

interface Side {
  side: 'direct' | 'gateway';
  origin: string;
  model: string;
  headers: Record<string, string>;
}

/**
 * Starts `streams` streams evenly over `rampMs`, waits for all of them (or the grace period),
 * then checks each one. `onTick` runs every 100 ms during the phase (RSS sampling).
 */
async function runStreams(target: Side, streams: number, rampMs: number, onTick: () => void) {
  // One undici Client (one connection) per stream: an SSE response holds its connection to the
  // end anyway, and a Pool of 5 000 connections scans them all for a free one on every dispatch.
  const clientOptions = { pipelining: 1, headersTimeout: PHASE_GRACE_MS, bodyTimeout: 30_000 };
  const clients: Client[] = [];
  const headers = { 'content-type': 'application/json', ...target.headers };
  const state = new PhaseState(streams);
  const records: StreamRecord[] = [];
  const loop = monitorEventLoopDelay({ resolution: 10 });
  loop.enable();
  const start = (i: number) => {
    const rec = new StreamRecord(i, state);
    records.push(rec);
    const body = `{"model":"${target.model}","prompt":"s${i} ${TAIL_WORDS}","max_tokens":${TOKENS},"stream":true,"fake_itl_ms":${ITL_MS}}`;
    rec.t0 = performance.now();
    const client = new Client(target.origin, clientOptions);
    clients.push(client);
    client.dispatch({ path: '/v1/completions', method: 'POST', headers, body }, rec);
  };
  let started = 0;
  const ramp = setInterval(() => {
    const due =
      rampMs === 0
        ? streams
        : Math.min(streams, Math.floor(((performance.now() - state.start) / rampMs) * streams) + 1);
    while (started < due) {
      start(started++);
    }
    if (started === streams) {
      clearInterval(ramp);
    }
  }, 5);
  const ticker = setInterval(onTick, 100);
  let timedOut = false;
  const grace = new Promise<void>((resolve) =>
    setTimeout(() => {
      timedOut = true;
      resolve();
    }, rampMs + PHASE_GRACE_MS).unref(),
  );
  await Promise.race([state.allDone, grace]);
  const elapsedMs = performance.now() - state.start;
  clearInterval(ramp);
  clearInterval(ticker);
  loop.disable();
  if (timedOut) {
    for (const rec of records) {
      rec.controller?.abort(new Error('timeout: still open after the grace period'));
    }
  }
  await Promise.all(clients.map((c) => c.destroy()));
  // The histogram holds whole timer intervals: what is beyond the 10 ms resolution is the delay.
  return { state, records, elapsedMs, started, clientLoopDelayP99Ms: loop.percentile(99) / 1e6 - 10 };
}

/** The checks, after the phase: every event of every stream parsed once, text compared once. */
function verify(state: PhaseState, records: StreamRecord[], streams: number) {
  const dropped: Record<string, { count: number; sample: string }> = {};
  const drop = (kind: string, sample: string) => {
    const d = (dropped[kind] ??= { count: 0, sample: sample.slice(0, 200) });
    d.count += 1;
  };
  const gaps = new Float64Array(streams * (TOKENS - 1));
  let gapCount = 0;
  const ttfts = new Float64Array(streams);
  const queueWaits = new Float64Array(streams);
  let ok = 0;
  let chunks = 0;
  for (let i = records.length; i < streams; i++) {
    drop('never started', `stream ${i}`);
  }
  for (const rec of records) {
    const raw = Buffer.concat(rec.chunks).toString('utf8');
    rec.chunks = [];
    if (rec.outcome === 'error') {
      drop(rec.error.startsWith('timeout') ? 'timeout' : `transport error (${rec.status || 'no status'})`, rec.error);
      continue;
    }
    if (rec.status !== 200) {
      drop(`status ${rec.status}`, raw);
      continue;
    }
    const frames = raw.split('\n\n');
    const base = rec.index * EVENT_SLOTS;
    let text = '';
    let textEvents = 0;
    let done = false;
    let error = '';
    let prev = 0;
    for (let k = 0; k < frames.length - 1; k++) {
      const data = (frames[k] ?? '')
        .split('\n')
        .filter((l) => l.startsWith('data:'))
        .map((l) => l.slice(5).trimStart())
        .join('\n');
      if (data === '') {
        continue; // a comment (keep-alive) or an empty event
      }
      if (data === '[DONE]') {
        done = true;
        continue;
      }
      const chunk = JSON.parse(data) as { choices?: { text?: string }[]; error?: unknown };
      if (chunk.error !== undefined) {
        error = data;
        continue;
      }
      const piece = chunk.choices?.[0]?.text ?? '';
      if (piece === '') {
        continue;
      }
      text += piece;
      const at = k < EVENT_SLOTS ? (state.times[base + k] ?? 0) : Number.NaN;
      if (textEvents === 0) {
        ttfts[ok] = at - rec.t0;
        queueWaits[ok] = rec.queueMs;
      } else {
        gaps[gapCount + textEvents - 1] = at - prev - ITL_MS;
      }
      prev = at;
      textEvents += 1;
    }
    chunks += textEvents;
    if (error !== '') {
      drop('error event', error);
    } else if (!done) {
      drop('no [DONE]', raw.slice(-200));
    } else if (textEvents !== TOKENS) {
      drop(`${textEvents} text chunks instead of ${TOKENS}`, raw.slice(-200));
    } else if (text !== expectedText(rec.index)) {
      drop('wrong text', text);
    } else {
      ok += 1;
      gapCount += TOKENS - 1;
    }
  }
  return {
    ok,
    chunks,
    dropped,
    addedGapMs: quantiles(gaps.subarray(0, gapCount)),
    ttftMs: quantiles(ttfts.subarray(0, ok)),
    queueMs: quantiles(queueWaits.subarray(0, ok).filter((q) => !Number.isNaN(q))),
  };
}

/** Runs one phase with RSS sampled before, throughout and after, and CPU over it. */
async function measuredPhase(target: Side, meter: CpuMeter, pids: Record<string, number>): Promise<PhaseResult> {
  const sample = () => Object.fromEntries(Object.entries(pids).map(([name, pid]) => [name, rssMiB(pid)]));
  const idle = sample();
  const peak = { ...idle };
  const onTick = () => {
    for (const [name, v] of Object.entries(sample())) {
      peak[name] = Math.max(peak[name] ?? 0, v);
    }
  };
  const before = await meter.sample();
  const run = await runStreams(target, OPEN_STREAMS, RAMP_MS, onTick);
  const cpuMs = CpuMeter.delta(before, await meter.sample());
  onTick();
  // "After": once the streams are gone and the garbage collector has had a moment.
  await new Promise((r) => setTimeout(r, 2_000));
  const after = sample();
  const checked = verify(run.state, run.records, OPEN_STREAMS);
  return {
    side: target.side,
    streams: OPEN_STREAMS,
    ...checked,
    peakOpen: run.state.peakOpen,
    peakOpenAtMs: run.state.peakOpenAt,
    elapsedMs: run.elapsedMs,
    cpuMs,
    rssMiB: Object.fromEntries(
      Object.keys(pids).map((n) => [n, { idle: idle[n] ?? 0, peak: peak[n] ?? 0, after: after[n] ?? 0 }]),
    ),
    clientLoopDelayP99Ms: run.clientLoopDelayP99Ms,
  };
}

/**
 * The fake upstream runs in a child process of its own (this file, forked): 100 000 chunk
 * writes per second in the client's event loop would delay the client's reads and show up
 * as gateway latency.
 */
async function startUpstreamProcess(cleanup: Cleanup): Promise<{ child: ChildProcess; port: number }> {
  const child = fork(__filename, ['--fake-upstream'], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  cleanup.add('open-streams upstream', async () => {
    // SIGTERM first: the child exits cleanly, so a `--cpu-prof` it inherited gets written.
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 5_000);
    await exited;
    clearTimeout(timer);
  });
  const port = await new Promise<number>((resolve, reject) => {
    child.once('message', (m: { port: number }) => resolve(m.port));
    child.once('exit', (code) => reject(new Error(`fake upstream exited (${code})`)));
  });
  return { child, port };
}

/**
 * The whole scenario; its processes and keys are gone when it returns or throws, and
 * `parent` (the bench's own cleanup) removes them too on SIGINT or the watchdog.
 */
export async function runOpenStreams(parent: Cleanup): Promise<OpenStreamsResult> {
  const files = maxOpenFiles();
  // Per process: one socket per stream (client, gateway, worker, upstream each hold N), plus slack.
  if (files < OPEN_STREAMS + 1_000) {
    throw new Error(
      `open streams: the open-file limit is ${files}, ${OPEN_STREAMS} streams need about ${OPEN_STREAMS + 1_000} ` +
        `per process: raise it (ulimit -Hn / -n) or lower BENCH_OPEN_STREAMS`,
    );
  }
  const cleanup = new Cleanup();
  parent.add('open streams', () => cleanup.run());
  try {
    return await scenario(cleanup);
  } finally {
    await cleanup.run();
  }
}

async function scenario(cleanup: Cleanup): Promise<OpenStreamsResult> {
  const upstream = await startUpstreamProcess(cleanup);
  const upstreamUrl = `http://127.0.0.1:${upstream.port}`;
  const routerConfig = writeModelList(upstreamDeployment('bench', `${upstreamUrl}/v1`));
  cleanup.add('router config', () => rmSync(dirname(routerConfig), { recursive: true, force: true }));

  const profEnv: Record<string, string> =
    PROF_DIR === '' ? {} : { NODE_OPTIONS: `--cpu-prof --cpu-prof-dir=${PROF_DIR}` };
  // Every limit that would otherwise cap the scenario below N: what is measured is the
  // gateway's cost per open stream, not its admission control.
  const stack = await Stack.start('bench-open', {
    routerConfig,
    env: {
      LOG_LEVEL: 'warn',
      AQUEDUCT_MAX_QUEUE_DEPTH: String(OPEN_STREAMS * 2),
      // The production default, not the Stack's 500 ms: a worker whose event loop is saturated
      // for 1.5 s would be declared dead and every new request refused with 503 no_workers.
      AQUEDUCT_HEARTBEAT_MS: '2000',
      ...profEnv,
    },
    workerEnv: { WORKER_CONCURRENCY: String(OPEN_STREAMS + 100), WORKER_METRICS_PORT: '0' },
  });
  cleanup.add('open-streams stack', () => stack.stop());
  const key = await stack.createKey({ name: 'bench-open', max_parallel_requests: OPEN_STREAMS * 2 });
  const gatewayPid = stack.gateway.child.pid;
  const workerPid = stack.workers[0]?.child.pid;
  const upstreamPid = upstream.child.pid;
  if (gatewayPid === undefined || workerPid === undefined || upstreamPid === undefined) {
    throw new Error('open streams: a process has no pid');
  }
  const pids = { gateway: gatewayPid, worker: workerPid, upstream: upstreamPid, bench: process.pid };
  const meter = new CpuMeter({ gateway: gatewayPid, worker: workerPid, upstream: upstreamPid }, stack.redis);
  const direct: Side = { side: 'direct', origin: upstreamUrl, model: 'fake-model', headers: {} };
  const gateway: Side = {
    side: 'gateway',
    origin: stack.baseUrl,
    model: 'bench',
    headers: { authorization: `Bearer ${key}` },
  };
  console.log(
    `open streams: ${OPEN_STREAMS} streams ramped over ${RAMP_MS} ms, gateway pid ${gatewayPid}, worker pid ${workerPid}, upstream pid ${upstreamPid}`,
  );

  // Warm-up: JIT and first-use allocations stay out of the idle RSS and of the figures.
  const warmup = Math.min(WARMUP_STREAMS, OPEN_STREAMS);
  await runStreams(direct, warmup, 500, () => undefined);
  await runStreams(gateway, warmup, 500, () => undefined);

  const directResult = DIRECT ? await measuredPhase(direct, meter, pids) : undefined;
  const gatewayResult = await measuredPhase(gateway, meter, pids);
  const g = gatewayResult.rssMiB.gateway;
  const gatewayMiBPerStream = g === undefined ? Number.NaN : (g.peak - g.idle) / gatewayResult.peakOpen;
  const pass = gatewayResult.ok === OPEN_STREAMS && gatewayResult.addedGapMs.p99 <= 10;
  return {
    streams: OPEN_STREAMS,
    rampMs: RAMP_MS,
    direct: directResult,
    gateway: gatewayResult,
    gatewayMiBPerStream,
    pass,
  };
}

/** The report: one table, the dropped streams by kind, and a PASS/FAIL line against the targets. */
export function formatOpenStreams(r: OpenStreamsResult): string {
  const sides = [r.direct, r.gateway].filter((p): p is PhaseResult => p !== undefined);
  const row = (label: string, cell: (p: PhaseResult) => string) => [label, ...sides.map(cell)];
  const cpu = (name: string) =>
    row(`CPU ${name} ms (% of one core, per chunk)`, (p) => {
      const v = p.cpuMs[name] ?? Number.NaN;
      return `${v.toFixed(0)} (${((100 * v) / p.elapsedMs).toFixed(0)}%, ${((1000 * v) / p.chunks).toFixed(1)} µs/chunk)`;
    });
  const rss = (name: string) =>
    row(`RSS ${name} MiB idle / peak / after`, (p) => {
      const m = p.rssMiB[name];
      return m === undefined ? 'n/a' : `${f1(m.idle)} / ${f1(m.peak)} / ${f1(m.after)}`;
    });
  const rows = [
    ['metric', ...sides.map((p) => p.side)],
    row('streams ok / started', (p) => `${p.ok}/${p.streams}`),
    row('dropped', (p) => String(p.streams - p.ok)),
    row('added inter-chunk p50 ms', (p) => f2(p.addedGapMs.p50)),
    row('added inter-chunk p99 ms', (p) => f2(p.addedGapMs.p99)),
    row('added inter-chunk max ms', (p) => f2(p.addedGapMs.max)),
    row('TTFT p50 ms', (p) => f1(p.ttftMs.p50)),
    row('TTFT p99 ms', (p) => f1(p.ttftMs.p99)),
    row('queue wait p50 / p99 ms (x-aqueduct-queue-ms)', (p) => `${f1(p.queueMs.p50)} / ${f1(p.queueMs.p99)}`),
    row('peak open streams (at ms)', (p) => `${p.peakOpen} (${p.peakOpenAtMs.toFixed(0)})`),
    row('phase ms', (p) => p.elapsedMs.toFixed(0)),
    cpu('gateway'),
    cpu('worker'),
    cpu('redis'),
    cpu('upstream'),
    cpu('bench'),
    rss('gateway'),
    rss('worker'),
    rss('upstream'),
    row('client event-loop delay p99 ms', (p) => f1(p.clientLoopDelayP99Ms)),
  ];
  const lines = [
    `\nOpen streams: ${r.streams} concurrent /v1/completions streams of ${TOKENS} tokens, ${ITL_MS} ms apart, ` +
      `started over ${r.rampMs} ms; one gateway, one worker`,
    table(rows),
    `gateway memory per open stream: ${f2(r.gatewayMiBPerStream * 1024)} KiB ` +
      `((peak − idle RSS) / peak open = (${f1(r.gateway.rssMiB.gateway?.peak ?? Number.NaN)} − ` +
      `${f1(r.gateway.rssMiB.gateway?.idle ?? Number.NaN)}) MiB / ${r.gateway.peakOpen})`,
  ];
  for (const p of sides) {
    for (const [kind, d] of Object.entries(p.dropped)) {
      lines.push(`  ${p.side} dropped: ${d.count} x ${kind}: ${d.sample.replaceAll('\n', '\\n')}`);
    }
  }
  const dropped = r.gateway.streams - r.gateway.ok;
  lines.push(
    `open streams: ${r.pass ? 'PASS' : 'FAIL'}: ${dropped} dropped (target 0), ` +
      `added inter-chunk p99 ${f2(r.gateway.addedGapMs.p99)} ms (target ≤ 10 ms)`,
  );
  return lines.join('\n');
}

if (require.main === module) {
  if (process.argv[2] === '--fake-upstream') {
    // The forked fake upstream: serve until told to stop, report the port to the parent.
    process.once('SIGTERM', () => process.exit(0));
    // The kernel caps the backlog at net.core.somaxconn (4096 here, as the gateway asks for).
    void startFakeUpstream({ record: false, backlog: 4_096 }).then((u) => process.send?.({ port: u.port }));
  } else {
    // The scenario alone (after a build): node dist/bench/bench/open-streams.js
    runBench('bench open-streams', OPEN_STREAMS_BUDGET_MS + 30_000, async (cleanup) => {
      const result = await runOpenStreams(cleanup);
      console.log(formatOpenStreams(result));
      console.log(JSON.stringify({ openStreams: result }));
    });
  }
}
