import { performance } from 'node:perf_hooks';
import { Logger } from '@nestjs/common';
import Redis from 'ioredis';
import type { ChunkMessage } from '../libs/common/src/contracts/relay-message';
import { createControlClient, createControlServer } from '../libs/common/src/redis/control-transport';
import { redisCpuMs } from './cpu';
import { REDIS_URL, uniquePrefix } from '../test/support/stack';

/**
 * Why token chunks ride on plain ioredis pub/sub while control messages use the
 * @nestjs/microservices Redis transport: the same stream of chunk messages is sent through
 * both, publisher and subscriber in this one process, and we compare messages per second and
 * CPU per message. Control traffic is a few messages per second, where the transport's
 * conveniences (reconnect handling, handler registry, Nest integration) cost nothing that
 * matters; chunks are the hot path, one message per token per stream.
 */

export interface TransportResult {
  transport: string;
  messages: number;
  elapsedMs: number;
  msgPerSec: number;
  /** CPU of this process (publisher + subscriber + (de)serialisation) per message. */
  processCpuUsPerMsg: number;
  /** Redis server CPU per message (shared Redis: includes other tenants' noise). */
  redisCpuUsPerMsg: number;
  /** Bytes of one message on the wire, payload only. */
  bytesPerMsg: number;
}

export interface RelayBenchResult {
  messagesPerRound: number;
  rounds: number;
  window: number;
  ioredis: TransportResult;
  nest: TransportResult;
}

interface Transport {
  name: string;
  /** Bytes published for one message. */
  wireBytes(msg: ChunkMessage): number;
  send(msg: ChunkMessage): void;
  close(): Promise<void>;
}

/** Counts arrivals and lets the sender wait until enough have arrived (flow control). */
class Arrivals {
  count = 0;
  private waiter: { target: number; resolve: () => void } | undefined;

  arrived(): void {
    this.count += 1;
    if (this.waiter !== undefined && this.count >= this.waiter.target) {
      const { resolve } = this.waiter;
      this.waiter = undefined;
      resolve();
    }
  }

  until(target: number, timeoutMs: number): Promise<void> {
    if (this.count >= target) {
      return Promise.resolve();
    }
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.waiter = undefined;
        reject(new Error(`only ${this.count} of ${target} messages arrived within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiter = {
        target,
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
      };
    });
  }
}

const RID = 'a3f9c2e17b4d5e60918f2c3d';
/** A chunk the size of a real one carrying a few tokens (~200 bytes of JSON). */
export function chunkMessage(seq: number): ChunkMessage {
  return {
    rid: RID,
    att: 0,
    seq,
    t: 'chunk',
    choices: [{ index: 0, text: ' the quick brown fox jumps over the lazy dog', logprobs: null, finish_reason: null }],
    system_fingerprint: 'fp_44709d6fcb',
  };
}

async function ioredisTransport(channel: string, onMessage: () => void): Promise<Transport> {
  const pub = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 });
  const sub = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 });
  await sub.subscribe(channel);
  // Same work the gateway's relay does per chunk: receive the string, JSON.parse it.
  sub.on('message', (_channel: string, raw: string) => {
    const msg = JSON.parse(raw) as ChunkMessage;
    if (msg.t === 'chunk') {
      onMessage();
    }
  });
  let failure: Error | undefined;
  return {
    name: 'ioredis pub/sub',
    wireBytes: (msg) => Buffer.byteLength(JSON.stringify(msg)),
    send: (msg) => {
      if (failure !== undefined) {
        throw failure;
      }
      pub.publish(channel, JSON.stringify(msg)).catch((err: Error) => (failure = err));
    },
    close: async () => {
      await Promise.allSettled([pub.quit(), sub.quit()]);
    },
  };
}

async function nestTransport(channel: string, onMessage: () => void): Promise<Transport> {
  // Built exactly as the gateway and workers build their control plane.
  const server = createControlServer({ REDIS_URL, AQUEDUCT_REDIS_CLUSTER: false });
  const client = createControlClient({ REDIS_URL, AQUEDUCT_REDIS_CLUSTER: false });
  server.addHandler(
    channel,
    (msg: ChunkMessage) => {
      if (msg.t === 'chunk') {
        onMessage();
      }
      return Promise.resolve();
    },
    true,
  );
  await new Promise<void>((resolve, reject) => {
    void server.listen((err?: unknown) =>
      err === undefined
        ? resolve()
        : reject(err instanceof Error ? err : new Error(`listen failed: ${JSON.stringify(err)}`)),
    );
  });
  await client.connect();
  let failure: Error | undefined;
  return {
    name: 'nest ClientRedis/ServerRedis',
    // ClientRedis publishes the packet `{ pattern, data }`.
    wireBytes: (msg) => Buffer.byteLength(JSON.stringify({ pattern: channel, data: msg })),
    send: (msg) => {
      if (failure !== undefined) {
        throw failure;
      }
      // emit() returns a hot Observable: it publishes whether or not we subscribe, but an
      // unsubscribed error would vanish, so subscribe to surface it.
      client.emit(channel, msg).subscribe({ error: (err: Error) => (failure = err) });
    },
    close: async () => {
      await Promise.allSettled([client.close(), server.close()]);
    },
  };
}

/**
 * Sends `n` messages with at most `window` in flight (sent but not yet received): a
 * sustained rate the subscriber keeps up with, as in production, instead of a burst that
 * only measures how fast Redis can buffer.
 */
async function drive(transport: Transport, arrivals: Arrivals, n: number, window: number): Promise<void> {
  const start = arrivals.count;
  for (let i = 0; i < n; i++) {
    if (i - (arrivals.count - start) >= window) {
      await arrivals.until(start + i - window / 2, 20_000);
    }
    transport.send(chunkMessage(i));
  }
  await arrivals.until(start + n, 20_000);
}

/** The subscription may not be active yet when listen()/subscribe() resolve: send until one arrives. */
async function prime(transport: Transport, arrivals: Arrivals): Promise<void> {
  const until = Date.now() + 10_000;
  while (arrivals.count === 0) {
    if (Date.now() > until) {
      throw new Error(`${transport.name}: no message came through within 10 s`);
    }
    transport.send(chunkMessage(-1));
    await new Promise((r) => setTimeout(r, 50));
  }
  // Let stragglers of the priming messages arrive before anything is measured.
  await new Promise((r) => setTimeout(r, 100));
}

interface Totals {
  messages: number;
  elapsedMs: number;
  cpuUs: number;
  redisMs: number;
}

async function measure(
  transport: Transport,
  arrivals: Arrivals,
  n: number,
  window: number,
  admin: Redis,
): Promise<Totals> {
  const redis0 = await redisCpuMs(admin);
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  await drive(transport, arrivals, n, window);
  const elapsedMs = performance.now() - t0;
  const cpu = process.cpuUsage(cpu0);
  const redisMs = (await redisCpuMs(admin)) - redis0;
  return { messages: n, elapsedMs, cpuUs: cpu.user + cpu.system, redisMs };
}

function summarise(transport: Transport, t: Totals): TransportResult {
  return {
    transport: transport.name,
    messages: t.messages,
    elapsedMs: t.elapsedMs,
    msgPerSec: (t.messages * 1000) / t.elapsedMs,
    processCpuUsPerMsg: t.cpuUs / t.messages,
    redisCpuUsPerMsg: (t.redisMs * 1000) / t.messages,
    bytesPerMsg: transport.wireBytes(chunkMessage(0)),
  };
}

export async function runRelayTransportBench(
  opts: { messages?: number; rounds?: number; window?: number } = {},
): Promise<RelayBenchResult> {
  const messages = Math.min(opts.messages ?? 50_000, 500_000);
  const rounds = opts.rounds ?? 2;
  const window = opts.window ?? 1_000;
  // The transport logs every (re)connection at LOG level; keep the benchmark output to results.
  Logger.overrideLogger(['error', 'warn']);
  // No keys are created (pub/sub only), but channels still get a private, unique prefix.
  const prefix = uniquePrefix('bench-relay');
  const admin = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 });
  const ioArrivals = new Arrivals();
  const nestArrivals = new Arrivals();
  const transports: Transport[] = [];
  try {
    const io = await ioredisTransport(`${prefix}:chunks-ioredis`, () => ioArrivals.arrived());
    transports.push(io);
    const nest = await nestTransport(`${prefix}:chunks-nest`, () => nestArrivals.arrived());
    transports.push(nest);
    await prime(io, ioArrivals);
    await prime(nest, nestArrivals);
    // Warm-up: JIT, ioredis buffers, Redis client output buffers.
    await drive(io, ioArrivals, Math.min(5_000, messages), window);
    await drive(nest, nestArrivals, Math.min(5_000, messages), window);

    const sum = (a: Totals, b: Totals): Totals => ({
      messages: a.messages + b.messages,
      elapsedMs: a.elapsedMs + b.elapsedMs,
      cpuUs: a.cpuUs + b.cpuUs,
      redisMs: a.redisMs + b.redisMs,
    });
    let ioTotal: Totals = { messages: 0, elapsedMs: 0, cpuUs: 0, redisMs: 0 };
    let nestTotal: Totals = { ...ioTotal };
    // Alternating rounds spread slow drifts (other Redis tenants, CPU frequency) over both.
    for (let r = 0; r < rounds; r++) {
      ioTotal = sum(ioTotal, await measure(io, ioArrivals, messages, window, admin));
      nestTotal = sum(nestTotal, await measure(nest, nestArrivals, messages, window, admin));
    }
    return {
      messagesPerRound: messages,
      rounds,
      window,
      ioredis: summarise(io, ioTotal),
      nest: summarise(nest, nestTotal),
    };
  } finally {
    await Promise.allSettled(transports.map((t) => t.close()));
    await admin.quit().catch(() => undefined);
  }
}

const f = (n: number, digits = 1) => n.toFixed(digits);

export function formatRelayResult(r: RelayBenchResult): string {
  const { ioredis: a, nest: b } = r;
  const rows = [
    ['metric', a.transport, b.transport, 'ratio'],
    ['messages/s', f(a.msgPerSec, 0), f(b.msgPerSec, 0), `${f(a.msgPerSec / b.msgPerSec, 2)}x (ioredis/nest)`],
    [
      'process CPU µs/msg (pub+sub)',
      f(a.processCpuUsPerMsg),
      f(b.processCpuUsPerMsg),
      `${f(b.processCpuUsPerMsg / a.processCpuUsPerMsg, 2)}x (nest/ioredis)`,
    ],
    [
      'redis CPU µs/msg (shared)',
      f(a.redisCpuUsPerMsg),
      f(b.redisCpuUsPerMsg),
      `${f(b.redisCpuUsPerMsg / a.redisCpuUsPerMsg, 2)}x (nest/ioredis)`,
    ],
    ['bytes/msg on the wire', String(a.bytesPerMsg), String(b.bytesPerMsg), `${f(b.bytesPerMsg / a.bytesPerMsg, 2)}x`],
  ];
  const head = `Relay transport: ${r.rounds} x ${r.messagesPerRound} chunk messages per transport, window ${r.window} in flight`;
  return `${head}\n${table(rows)}`;
}

/** Left-aligned first column, right-aligned numbers. */
export function table(rows: string[][]): string {
  const widths = rows[0]?.map((_, c) => Math.max(...rows.map((r) => (r[c] ?? '').length))) ?? [];
  const line = (r: string[]) =>
    r.map((cell, c) => (c === 0 ? cell.padEnd(widths[c] ?? 0) : cell.padStart(widths[c] ?? 0))).join(' | ');
  const sep = widths.map((w) => '-'.repeat(w)).join('-+-');
  return [line(rows[0] ?? []), sep, ...rows.slice(1).map(line)].join('\n');
}

if (require.main === module) {
  const messages = Number(process.env.BENCH_RELAY_MESSAGES ?? 50_000);
  runRelayTransportBench({ messages })
    .then((r) => {
      console.log(formatRelayResult(r));
      console.log(JSON.stringify({ relayTransport: r }));
      process.exit(0);
    })
    .catch((err: unknown) => {
      console.error(err);
      process.exit(1);
    });
}
