import { performance } from 'node:perf_hooks';
import { Pool } from 'undici';

/**
 * Closed-loop HTTP load: `concurrency` virtual users, each sending its next request as soon
 * as the previous one finished, until a deadline. The same code drives the upstream directly
 * and the gateway, so the only difference between the two measurements is the gateway itself.
 */

/** Which OpenAI operation a target speaks: it decides where the answer's text is. */
export type Operation = 'completion' | 'chat';

/** What to send; the origin belongs to the Pool. */
export interface Target {
  /** e.g. `/v1/completions`. */
  path: string;
  /** `completion` (the default): text in `choices[].text`; `chat`: in `message.content` / `delta.content`. */
  op?: Operation;
  headers: Record<string, string>;
  /** Request body fields; `model` differs between direct and gateway, the rest is identical. */
  body: Record<string, unknown>;
}

export interface Failure {
  status: number;
  /** First bytes of the body, or the error message for transport failures (status 0). */
  sample: string;
}

export interface NonStreamResult {
  requests: number;
  ok: number;
  failures: Map<number, Failure & { count: number }>;
  elapsedMs: number;
  rps: number;
  latencyMs: Percentiles;
}

export interface StreamResult {
  streams: number;
  ok: number;
  failures: Map<number, Failure & { count: number }>;
  elapsedMs: number;
  ttftMs: Percentiles;
  totalMs: Percentiles;
  /** Mean number of text-carrying data frames per successful stream (sanity check). */
  tokensPerStream: number;
}

export interface Percentiles {
  p50: number;
  p99: number;
  mean: number;
  count: number;
}

export function percentiles(samples: number[]): Percentiles {
  if (samples.length === 0) {
    return { p50: Number.NaN, p99: Number.NaN, mean: Number.NaN, count: 0 };
  }
  const sorted = Float64Array.from(samples).sort();
  // Nearest-rank: the smallest sample with at least p% of the samples at or below it.
  const rank = (p: number) =>
    sorted[Math.min(sorted.length - 1, Math.ceil((p / 100) * sorted.length) - 1)] ?? Number.NaN;
  const sum = sorted.reduce((a, b) => a + b, 0);
  return { p50: rank(50), p99: rank(99), mean: sum / sorted.length, count: sorted.length };
}

/** One keep-alive pool per target: connection setup stays out of the measured latencies. */
export function createPool(origin: string, connections: number): Pool {
  return new Pool(origin, {
    connections,
    pipelining: 1,
    keepAliveTimeout: 30_000,
    // Bounded, so a stuck gateway turns into counted failures instead of a hung benchmark.
    headersTimeout: 15_000,
    bodyTimeout: 15_000,
  });
}

function recordFailure(failures: Map<number, Failure & { count: number }>, status: number, sample: string): void {
  const seen = failures.get(status);
  if (seen === undefined) {
    failures.set(status, { status, sample: sample.slice(0, 300), count: 1 });
  } else {
    seen.count += 1;
  }
}

async function closedLoop(
  concurrency: number,
  durationMs: number,
  one: (user: number) => Promise<void>,
): Promise<number> {
  const start = performance.now();
  const deadline = start + durationMs;
  const user = async (_: unknown, u: number) => {
    while (performance.now() < deadline) {
      await one(u);
    }
  };
  await Promise.all(Array.from({ length: concurrency }, user));
  return performance.now() - start;
}

/** The text of a non-stream choice (`text`, or a chat `message.content`). */
function choiceText(op: Operation, choice: { text?: unknown; message?: { content?: unknown } } | undefined): unknown {
  return op === 'chat' ? choice?.message?.content : choice?.text;
}

/** The text of a stream chunk's choice (`text`, or a chat `delta.content`; a role-only delta has none). */
function deltaText(op: Operation, choice: { text?: unknown; delta?: { content?: unknown } }): unknown {
  return op === 'chat' ? choice.delta?.content : choice.text;
}

function requestOptions(target: Target, extra: Record<string, unknown>) {
  return {
    path: target.path,
    method: 'POST' as const,
    headers: { 'content-type': 'application/json', ...target.headers },
    body: JSON.stringify({ ...target.body, ...extra }),
  };
}

/** Non-stream completions (or chat completions); a request counts as ok only when it is a 200 with choice text. */
export async function runNonStream(
  pool: Pool,
  target: Target,
  concurrency: number,
  durationMs: number,
): Promise<NonStreamResult> {
  const latencies: number[] = [];
  const failures = new Map<number, Failure & { count: number }>();
  let requests = 0;
  const op = target.op ?? 'completion';
  const opts = requestOptions(target, { stream: false });
  const elapsedMs = await closedLoop(concurrency, durationMs, async () => {
    const t0 = performance.now();
    requests += 1;
    try {
      const res = await pool.request(opts);
      const text = await res.body.text();
      const ms = performance.now() - t0;
      if (res.statusCode !== 200) {
        recordFailure(failures, res.statusCode, text);
        return;
      }
      const parsed = JSON.parse(text) as { choices?: { text?: unknown; message?: { content?: unknown } }[] };
      const first = choiceText(op, parsed.choices?.[0]);
      if (typeof first !== 'string' || first === '') {
        recordFailure(failures, 200, `no choice text: ${text}`);
        return;
      }
      latencies.push(ms);
    } catch (err) {
      recordFailure(failures, 0, (err as Error).message);
    }
  });
  return {
    requests,
    ok: latencies.length,
    failures,
    elapsedMs,
    rps: (latencies.length * 1000) / elapsedMs,
    latencyMs: percentiles(latencies),
  };
}

/**
 * Streamed completions (or chat completions). TTFT is request start → the first `data:` frame
 * whose choices carry non-empty text (a role-only or empty frame would flatter the gateway).
 * Every frame is parsed on both sides, so the client's own cost is the same for direct and
 * gateway. With several targets (same operation), virtual user `u` sends `targets[u % n]`:
 * e.g. one token and model each, measured as one population.
 */
export async function runStream(
  pool: Pool,
  targets: Target | readonly Target[],
  concurrency: number,
  durationMs: number,
): Promise<StreamResult> {
  const list = Array.isArray(targets) ? targets : [targets as Target];
  const target = list[0];
  if (target === undefined) {
    throw new Error('runStream needs a target');
  }
  const ttfts: number[] = [];
  const totals: number[] = [];
  const failures = new Map<number, Failure & { count: number }>();
  let streams = 0;
  let tokens = 0;
  const op = target.op ?? 'completion';
  const opts = list.map((t) => requestOptions(t, { stream: true }));
  const elapsedMs = await closedLoop(concurrency, durationMs, async (user) => {
    const t0 = performance.now();
    streams += 1;
    try {
      const res = await pool.request(opts[user % opts.length]!);
      if (res.statusCode !== 200) {
        recordFailure(failures, res.statusCode, await res.body.text());
        return;
      }
      let buffer = '';
      let ttft: number | undefined;
      let textFrames = 0;
      let done = false;
      res.body.setEncoding('utf8');
      for await (const piece of res.body as AsyncIterable<string>) {
        buffer += piece;
        let end: number;
        while ((end = buffer.indexOf('\n\n')) !== -1) {
          const frame = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          if (!frame.startsWith('data: ')) {
            continue;
          }
          const data = frame.slice(6);
          if (data === '[DONE]') {
            done = true;
            continue;
          }
          const chunk = JSON.parse(data) as {
            choices?: { text?: unknown; delta?: { content?: unknown } }[];
            error?: unknown;
          };
          if (chunk.error !== undefined) {
            throw new Error(`error frame: ${data}`);
          }
          if (
            chunk.choices?.some((c) => {
              const t = deltaText(op, c);
              return typeof t === 'string' && t !== '';
            }) === true
          ) {
            ttft ??= performance.now() - t0;
            textFrames += 1;
          }
        }
      }
      if (!done || ttft === undefined) {
        recordFailure(failures, 200, `stream ended without ${done ? 'text' : '[DONE]'}; tail: ${buffer}`);
        return;
      }
      ttfts.push(ttft);
      totals.push(performance.now() - t0);
      tokens += textFrames;
    } catch (err) {
      recordFailure(failures, 0, (err as Error).message);
    }
  });
  return {
    streams,
    ok: ttfts.length,
    failures,
    elapsedMs,
    ttftMs: percentiles(ttfts),
    totalMs: percentiles(totals),
    tokensPerStream: ttfts.length === 0 ? 0 : tokens / ttfts.length,
  };
}
