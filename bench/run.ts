import { rmSync } from 'node:fs';
import { dirname } from 'node:path';
import type { Pool } from 'undici';
import { type FakeUpstream, startFakeUpstream } from '../test/support/fake-upstream';
import { Stack, writeRouterConfig } from '../test/support/stack';
import { CpuMeter, type CpuSnapshot } from './cpu';
import {
  createPool,
  type Failure,
  type NonStreamResult,
  type Operation,
  runNonStream,
  runStream,
  type StreamResult,
  type Target,
} from './load';
import { formatRelayResult, type RelayBenchResult, runRelayTransportBench, table } from './relay-transport';
import { Cleanup, f2 as ms, intEnv, runBench } from './harness';
import {
  formatOpenStreams,
  OPEN_STREAMS,
  OPEN_STREAMS_BUDGET_MS,
  type OpenStreamsResult,
  runOpenStreams,
} from './open-streams';

/**
 * `npm run bench`: the cost of the gateway on the request path. The same client and the same
 * fake upstream are measured twice, once calling the upstream directly and once through a real
 * gateway + worker (child processes, as in production), so every difference is the gateway's.
 */

// Clamped so that the completion scenarios (4 measured phases + warm-ups + relay test) stay
// under 2 minutes; the chat scenario (BENCH_CHAT=0 skips it) adds 4 phases and warm-ups more.
const DURATION_MS = intEnv('BENCH_DURATION_MS', 8_000, 500, 15_000);
const CONCURRENCY = intEnv('BENCH_CONCURRENCY', 16, 1, 256);
const WARMUP_MS = intEnv('BENCH_WARMUP_MS', 1_000, 0, 5_000);
const RELAY_MESSAGES = intEnv('BENCH_RELAY_MESSAGES', 50_000, 1_000, 200_000);
const CHAT = intEnv('BENCH_CHAT', 1, 0, 1) === 1;
/** What the chat scenario adds to the run: its 4 phases and warm-ups, plus slack. */
const CHAT_BUDGET_MS = CHAT ? 4 * DURATION_MS + 3 * WARMUP_MS + 10_000 : 0;
/**
 * Hard stop for everything, cleanup included (Stack.stop itself may take up to 10 s); the
 * open-streams scenario brings its own budget.
 */
const WATCHDOG_MS = 110_000 + CHAT_BUDGET_MS + OPEN_STREAMS_BUDGET_MS;

const NON_STREAM_PROMPT = 'measure the gateway overhead with a short prompt';
/** 19 words: the fake upstream answers " echo:" + one token per word = 20 tokens. */
const STREAM_PROMPT =
  'one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen';
const STREAM_ITL_MS = 5;

/** Stack.start stops its own processes and keys when startup fails. */
function startStack(routerConfig: string): Promise<Stack> {
  return Stack.start('bench', {
    routerConfig,
    env: { LOG_LEVEL: 'warn' },
    workerEnv: { WORKER_CONCURRENCY: String(Math.max(64, CONCURRENCY * 2)) },
  });
}

interface PhasePair<T> {
  direct: T;
  gateway: T;
}

interface CpuReport {
  requests: number;
  components: {
    name: string;
    gatewayPhaseMs: number;
    directPhaseMs: number;
    msPerRequest: number;
    /** Minus what the component burnt meanwhile in the direct phase (idle loops, other tenants). */
    netMsPerRequest: number;
  }[];
  totalMsPerRequest: number;
  totalNetMsPerRequest: number;
  bench: { directMsPerRequest: number; gatewayMsPerRequest: number };
}

function cpuReport(direct: CpuSnapshot, gateway: CpuSnapshot, d: NonStreamResult, g: NonStreamResult): CpuReport {
  const scale = g.elapsedMs / d.elapsedMs;
  const components = ['gateway', 'worker', 'redis'].map((name) => {
    const gatewayPhaseMs = gateway[name] ?? Number.NaN;
    const directPhaseMs = direct[name] ?? Number.NaN;
    return {
      name,
      gatewayPhaseMs,
      directPhaseMs,
      msPerRequest: gatewayPhaseMs / g.ok,
      netMsPerRequest: (gatewayPhaseMs - directPhaseMs * scale) / g.ok,
    };
  });
  return {
    requests: g.ok,
    components,
    totalMsPerRequest: components.reduce((s, c) => s + c.msPerRequest, 0),
    totalNetMsPerRequest: components.reduce((s, c) => s + c.netMsPerRequest, 0),
    bench: {
      directMsPerRequest: (direct.bench ?? Number.NaN) / d.ok,
      gatewayMsPerRequest: (gateway.bench ?? Number.NaN) / g.ok,
    },
  };
}

const ratio = (a: number, b: number, label: string) => `${(a / b).toFixed(2)}x (${label})`;

function failureLines(label: string, failures: Map<number, Failure & { count: number }>): string[] {
  return [...failures.values()].map(
    (f) => `  ${label}: ${f.count} x ${f.status === 0 ? 'transport error' : `status ${f.status}`}: ${f.sample}`,
  );
}

/** One scenario's figures, direct vs gateway; `label` prefixes every metric name ('' for completions). */
function scenarioRows(label: string, ns: PhasePair<NonStreamResult>, st: PhasePair<StreamResult>): string[][] {
  const c = CONCURRENCY;
  return [
    ['metric', 'direct', 'gateway', 'ratio'],
    [
      `${label}non-stream req/s (c=${c})`,
      ns.direct.rps.toFixed(0),
      ns.gateway.rps.toFixed(0),
      ratio(ns.direct.rps, ns.gateway.rps, 'direct/gateway'),
    ],
    [
      `${label}non-stream latency p50 ms`,
      ms(ns.direct.latencyMs.p50),
      ms(ns.gateway.latencyMs.p50),
      ratio(ns.gateway.latencyMs.p50, ns.direct.latencyMs.p50, 'gateway/direct'),
    ],
    [
      `${label}non-stream latency p99 ms`,
      ms(ns.direct.latencyMs.p99),
      ms(ns.gateway.latencyMs.p99),
      ratio(ns.gateway.latencyMs.p99, ns.direct.latencyMs.p99, 'gateway/direct'),
    ],
    [
      `${label}non-stream ok / sent`,
      `${ns.direct.ok}/${ns.direct.requests}`,
      `${ns.gateway.ok}/${ns.gateway.requests}`,
      '',
    ],
    [
      `${label}stream TTFT p50 ms (c=${c})`,
      ms(st.direct.ttftMs.p50),
      ms(st.gateway.ttftMs.p50),
      ratio(st.gateway.ttftMs.p50, st.direct.ttftMs.p50, 'gateway/direct'),
    ],
    [
      `${label}stream TTFT p99 ms`,
      ms(st.direct.ttftMs.p99),
      ms(st.gateway.ttftMs.p99),
      ratio(st.gateway.ttftMs.p99, st.direct.ttftMs.p99, 'gateway/direct'),
    ],
    [
      `${label}stream total p50 ms`,
      ms(st.direct.totalMs.p50),
      ms(st.gateway.totalMs.p50),
      ratio(st.gateway.totalMs.p50, st.direct.totalMs.p50, 'gateway/direct'),
    ],
    [
      `${label}stream text frames/stream`,
      st.direct.tokensPerStream.toFixed(1),
      st.gateway.tokensPerStream.toFixed(1),
      '',
    ],
    [`${label}streams ok / sent`, `${st.direct.ok}/${st.direct.streams}`, `${st.gateway.ok}/${st.gateway.streams}`, ''],
  ];
}

function cpuRows(cpu: CpuReport): string[][] {
  return [
    ['component', 'CPU ms (gateway phase)', 'ms/request', 'CPU ms (direct phase: background)', 'net ms/request'],
    ...cpu.components.map((x) => [
      x.name,
      ms(x.gatewayPhaseMs),
      ms(x.msPerRequest),
      ms(x.directPhaseMs),
      ms(x.netMsPerRequest),
    ]),
    ['total gateway+worker+redis', '', ms(cpu.totalMsPerRequest), '', ms(cpu.totalNetMsPerRequest)],
  ];
}

/** The figures of one scenario: its non-stream and stream phases, both ways, and CPU per non-stream request. */
interface Scenario {
  ns: PhasePair<NonStreamResult>;
  st: PhasePair<StreamResult>;
  cpu: CpuReport;
}

function report(
  completion: Scenario,
  chat: Scenario | undefined,
  relay: RelayBenchResult | undefined,
  relayError: string | undefined,
): void {
  const { ns, st, cpu } = completion;
  const c = CONCURRENCY;
  const rows = scenarioRows('', ns, st);
  console.log(
    `\nGateway vs direct upstream: ${DURATION_MS} ms per phase, concurrency ${c}, ${STREAM_ITL_MS} ms between stream tokens`,
  );
  console.log(table(rows));
  console.log(
    `\nadded TTFT p50: ${ms(st.gateway.ttftMs.p50 - st.direct.ttftMs.p50)} ms` +
      `   added TTFT p99: ${ms(st.gateway.ttftMs.p99 - st.direct.ttftMs.p99)} ms` +
      `   added non-stream latency p50: ${ms(ns.gateway.latencyMs.p50 - ns.direct.latencyMs.p50)} ms`,
  );

  console.log(
    `\nCPU per non-stream request through the gateway (${cpu.requests} requests; redis is shared, so net = minus the direct-phase background)`,
  );
  console.log(table(cpuRows(cpu)));
  console.log(
    `bench process (client + fake upstream, same work both ways): ${ms(cpu.bench.directMsPerRequest)} ms/request direct, ` +
      `${ms(cpu.bench.gatewayMsPerRequest)} ms/request via gateway`,
  );

  if (chat !== undefined) {
    console.log(
      `\nChat completions (/v1/chat/completions), gateway vs direct upstream: ${DURATION_MS} ms per phase, concurrency ${c}, ` +
        `${STREAM_ITL_MS} ms between stream tokens`,
    );
    console.log(table(scenarioRows('chat ', chat.ns, chat.st)));
    console.log(
      `\nchat added TTFT p50: ${ms(chat.st.gateway.ttftMs.p50 - chat.st.direct.ttftMs.p50)} ms` +
        `   added TTFT p99: ${ms(chat.st.gateway.ttftMs.p99 - chat.st.direct.ttftMs.p99)} ms` +
        `   added non-stream latency p50: ${ms(chat.ns.gateway.latencyMs.p50 - chat.ns.direct.latencyMs.p50)} ms`,
    );
    console.log(`\nCPU per non-stream chat request through the gateway (${chat.cpu.requests} requests)`);
    console.log(table(cpuRows(chat.cpu)));
    console.log(
      `bench process: ${ms(chat.cpu.bench.directMsPerRequest)} ms/request direct, ` +
        `${ms(chat.cpu.bench.gatewayMsPerRequest)} ms/request via gateway`,
    );
  }

  const failures = [
    ...failureLines('direct non-stream', ns.direct.failures),
    ...failureLines('gateway non-stream', ns.gateway.failures),
    ...failureLines('direct stream', st.direct.failures),
    ...failureLines('gateway stream', st.gateway.failures),
    ...(chat === undefined
      ? []
      : [
          ...failureLines('direct chat non-stream', chat.ns.direct.failures),
          ...failureLines('gateway chat non-stream', chat.ns.gateway.failures),
          ...failureLines('direct chat stream', chat.st.direct.failures),
          ...failureLines('gateway chat stream', chat.st.gateway.failures),
        ]),
  ];
  if (failures.length > 0) {
    console.log('\nFAILURES:');
    console.log(failures.join('\n'));
  }
  if (relay !== undefined) {
    console.log(`\n${formatRelayResult(relay)}`);
  } else {
    console.log(`\nrelay transport benchmark failed: ${relayError ?? 'unknown error'}`);
  }
}

const failureJson = (m: Map<number, Failure & { count: number }>) => [...m.values()];
const nonStreamJson = (r: NonStreamResult) => ({ ...r, failures: failureJson(r.failures) });
const streamJson = (r: StreamResult) => ({ ...r, failures: failureJson(r.failures) });

async function main(cleanup: Cleanup): Promise<void> {
  // The completion and chat scenarios' stack and upstream are cleaned up before the relay
  // test and the open-streams scenario; `cleanup` still runs them on a crash or the watchdog.
  const first = new Cleanup();
  cleanup.add('completion scenarios', () => first.run());
  const upstream: FakeUpstream = await startFakeUpstream({ record: false });
  first.add('fake upstream', () => upstream.close());

  const routerConfig = writeRouterConfig(`
model_list:
  - model_name: bench
    litellm_params:
      model: openai/fake-model
      api_base: ${upstream.url}
      # The fake upstream's pacing knob is an extension: only allowed fields go upstream.
      extra_body_allowed: [fake_itl_ms]
`);
  first.add('router config', () => rmSync(dirname(routerConfig), { recursive: true, force: true }));

  const stack = await startStack(routerConfig);
  first.add('stack', () => stack.stop());
  // Any concurrency the bench is asked for: the token's own limit must not be what is measured.
  const key = await stack.createKey({ name: 'bench', max_parallel_requests: 100_000 });
  const gatewayPid = stack.gateway.child.pid;
  const workerPid = stack.workers[0]?.child.pid;
  if (gatewayPid === undefined || workerPid === undefined) {
    throw new Error('gateway or worker has no pid');
  }
  console.log(
    `stack up: prefix ${stack.prefix}, gateway pid ${gatewayPid}, worker pid ${workerPid}, upstream ${upstream.url}`,
  );

  const directPool = createPool(`http://127.0.0.1:${upstream.port}`, CONCURRENCY);
  const gatewayPool = createPool(stack.baseUrl, CONCURRENCY);
  first.add('http pools', () => Promise.allSettled([directPool.close(), gatewayPool.close()]));

  // Identical bodies except the model name: the worker rewrites `bench` to `fake-model`.
  const targets = (extra: Record<string, unknown>, path = '/v1/completions', op: Operation = 'completion') => {
    const pair: PhasePair<Target> = {
      direct: { path, op, headers: {}, body: { model: 'fake-model', ...extra } },
      gateway: { path, op, headers: { authorization: `Bearer ${key}` }, body: { model: 'bench', ...extra } },
    };
    return pair;
  };
  const nsTargets = targets({ prompt: NON_STREAM_PROMPT, max_tokens: 16 });
  const stTargets = targets({ prompt: STREAM_PROMPT, max_tokens: 20, fake_itl_ms: STREAM_ITL_MS });
  // The same words as the completion scenarios, as the one user message of a chat.
  const chatTargets = (prompt: string, extra: Record<string, unknown>) =>
    targets({ messages: [{ role: 'user', content: prompt }], ...extra }, '/v1/chat/completions', 'chat');
  const chatNsTargets = chatTargets(NON_STREAM_PROMPT, { max_tokens: 16 });
  const chatStTargets = chatTargets(STREAM_PROMPT, { max_tokens: 20, fake_itl_ms: STREAM_ITL_MS });
  const pools: PhasePair<Pool> = { direct: directPool, gateway: gatewayPool };

  if (WARMUP_MS > 0) {
    for (const side of ['direct', 'gateway'] as const) {
      await runNonStream(pools[side], nsTargets[side], CONCURRENCY, WARMUP_MS);
      await runStream(pools[side], stTargets[side], CONCURRENCY, WARMUP_MS / 2);
    }
  }

  const meter = new CpuMeter({ gateway: gatewayPid, worker: workerPid }, stack.redis);
  const measured = async (side: 'direct' | 'gateway', target: PhasePair<Target>) => {
    const before = await meter.sample();
    const result = await runNonStream(pools[side], target[side], CONCURRENCY, DURATION_MS);
    return { result, cpu: CpuMeter.delta(before, await meter.sample()) };
  };
  /** Non-stream direct, non-stream gateway (with CPU), stream direct, stream gateway. */
  const scenario = async (nsTarget: PhasePair<Target>, stTarget: PhasePair<Target>): Promise<Scenario> => {
    const nsDirect = await measured('direct', nsTarget);
    const nsGateway = await measured('gateway', nsTarget);
    const ns = { direct: nsDirect.result, gateway: nsGateway.result };
    const st: PhasePair<StreamResult> = {
      direct: await runStream(pools.direct, stTarget.direct, CONCURRENCY, DURATION_MS),
      gateway: await runStream(pools.gateway, stTarget.gateway, CONCURRENCY, DURATION_MS),
    };
    return { ns, st, cpu: cpuReport(nsDirect.cpu, nsGateway.cpu, ns.direct, ns.gateway) };
  };
  const completion = await scenario(nsTargets, stTargets);
  const { ns, st, cpu } = completion;

  // Chat runs after every completion phase, with its own warm-up, so the completion figures
  // are measured exactly as before.
  let chat: Scenario | undefined;
  if (CHAT) {
    if (WARMUP_MS > 0) {
      for (const side of ['direct', 'gateway'] as const) {
        await runNonStream(pools[side], chatNsTargets[side], CONCURRENCY, WARMUP_MS);
        await runStream(pools[side], chatStTargets[side], CONCURRENCY, WARMUP_MS / 2);
      }
    }
    chat = await scenario(chatNsTargets, chatStTargets);
  }

  const gatewayLog = stack.gateway.output().trim();
  const workerLog = stack.workers
    .map((w) => w.output().trim())
    .join('\n')
    .trim();
  // Stop the stack before the relay micro-benchmark so idle processes do not share its CPU.
  await first.run();

  let relay: RelayBenchResult | undefined;
  let relayError: string | undefined;
  try {
    relay = await runRelayTransportBench({ messages: RELAY_MESSAGES });
  } catch (err) {
    relayError = (err as Error).message;
  }

  report(completion, chat, relay, relayError);
  // Only warnings and errors: Nest prints its boot lines at LOG level whatever LOG_LEVEL says.
  for (const [name, log] of [
    ['gateway', gatewayLog],
    ['worker', workerLog],
  ] as const) {
    const lines = log.split('\n').filter((l) => /\b(WARN|ERROR|FATAL)\b/.test(l));
    if (lines.length > 0) {
      console.log(`\n${name} warnings/errors (${lines.length}, last ${Math.min(20, lines.length)}):`);
      console.log(lines.slice(-20).join('\n'));
    }
  }

  // Last, on a stack of its own: the scenario needs limits far above the others' and its
  // 5 000 sockets per process must not be open while they measure.
  let openStreams: OpenStreamsResult | undefined;
  let openStreamsError: Error | undefined;
  if (OPEN_STREAMS > 0) {
    try {
      openStreams = await runOpenStreams(cleanup);
      console.log(formatOpenStreams(openStreams));
    } catch (err) {
      openStreamsError = err instanceof Error ? err : new Error(String(err));
      console.log(`\nopen streams scenario crashed: ${openStreamsError.message}`);
    }
  }
  console.log(
    JSON.stringify({
      bench: 'aqueduct-gateway',
      config: {
        durationMs: DURATION_MS,
        concurrency: CONCURRENCY,
        warmupMs: WARMUP_MS,
        streamItlMs: STREAM_ITL_MS,
        chat: CHAT,
      },
      nonStream: { direct: nonStreamJson(ns.direct), gateway: nonStreamJson(ns.gateway) },
      stream: { direct: streamJson(st.direct), gateway: streamJson(st.gateway) },
      addedTtftP50Ms: st.gateway.ttftMs.p50 - st.direct.ttftMs.p50,
      cpuPerRequestMs: cpu,
      ...(chat !== undefined && {
        chat: {
          nonStream: { direct: nonStreamJson(chat.ns.direct), gateway: nonStreamJson(chat.ns.gateway) },
          stream: { direct: streamJson(chat.st.direct), gateway: streamJson(chat.st.gateway) },
          addedTtftP50Ms: chat.st.gateway.ttftMs.p50 - chat.st.direct.ttftMs.p50,
          cpuPerRequestMs: chat.cpu,
        },
      }),
      relayTransport: relay ?? { error: relayError },
      ...(OPEN_STREAMS > 0 && { openStreams: openStreams ?? { error: openStreamsError?.message } }),
    }),
  );
  // A FAIL against the targets is a measurement (exit 0); a crash of the scenario is not.
  if (openStreamsError !== undefined) {
    throw openStreamsError;
  }
}

runBench('bench', WATCHDOG_MS, main);
