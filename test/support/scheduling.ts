import type { Stack } from './stack';
import { waitUntil } from './wait';
import { parsePrometheus, type Sample } from './prometheus';

/**
 * Observing the scheduler from outside, for the scheduling suites: timed exchanges that keep
 * the `x-aqueduct-queue-ms` header, the queue metrics on `/metrics`, and the jobs still
 * waiting in Redis, whatever the queue is called (one queue per model, hash-tagged or not).
 */

/** One whole exchange with its timing. */
export interface TimedResponse {
  status: number;
  headers: Headers;
  text: string;
  /** The parsed body, or undefined when it is not JSON. */
  json: unknown;
  /** When the request was sent (epoch ms). */
  sentAt: number;
  /** When the body had been read to the end (epoch ms). */
  endedAt: number;
  /** endedAt - sentAt. */
  ms: number;
  /** `x-aqueduct-queue-ms` as a number; NaN when the header is absent or not an integer. */
  queueMs: number;
}

/** The integer value of `x-aqueduct-queue-ms`, NaN when absent or malformed. */
export function queueMsOf(headers: Headers): number {
  const raw = headers.get('x-aqueduct-queue-ms');
  return raw !== null && /^\d+$/.test(raw) ? Number(raw) : Number.NaN;
}

/** POSTs one completion and reads it to the end; a transport error (abort, killed gateway) rejects. */
export async function timedCompletion(
  base: string,
  key: string,
  body: Record<string, unknown>,
  signal?: AbortSignal,
): Promise<TimedResponse> {
  const sentAt = Date.now();
  const res = await fetch(`${base}/v1/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal,
  });
  const text = await res.text();
  const endedAt = Date.now();
  let json: unknown;
  try {
    json = JSON.parse(text) as unknown;
  } catch {
    json = undefined;
  }
  return {
    status: res.status,
    headers: res.headers,
    text,
    json,
    sentAt,
    endedAt,
    ms: endedAt - sentAt,
    queueMs: queueMsOf(res.headers),
  };
}

/** The `choices[0].text` of a non-stream completion body. */
export function completionText(res: { json: unknown }): string | undefined {
  return (res.json as { choices?: { text?: string }[] } | undefined)?.choices?.[0]?.text;
}

// ---- Prometheus ------------------------------------------------------------------------

export interface Scrape {
  text: string;
  samples: Sample[];
}

export async function scrapeMetrics(base: string, adminKey?: string): Promise<Scrape> {
  const res = await fetch(`${base}/metrics`, {
    headers: adminKey === undefined ? {} : { authorization: `Bearer ${adminKey}` },
  });
  const text = await res.text();
  if (res.status !== 200) {
    throw new Error(`GET /metrics answered ${res.status}: ${text.slice(0, 300)}`);
  }
  return { text, samples: parsePrometheus(text) };
}

/** Sum of a metric's samples whose labels include `match`; undefined when no sample matches. */
export function metricSum(samples: Sample[], name: string, match: Record<string, string> = {}): number | undefined {
  const hits = samples.filter((s) => s.name === name && Object.entries(match).every(([k, v]) => s.labels[k] === v));
  return hits.length === 0 ? undefined : hits.reduce((n, s) => n + s.value, 0);
}

/** `aqueduct_queue_waiting_requests{model}` as the gateway reports it now (undefined: no such sample). */
export async function waitingGauge(base: string, model: string): Promise<number | undefined> {
  try {
    return metricSum((await scrapeMetrics(base)).samples, 'aqueduct_queue_waiting_requests', { model });
  } catch {
    return undefined;
  }
}

// ---- Redis ------------------------------------------------------------------------------

/** The last segment of the BullMQ (or scheduler) keys that hold jobs not yet started. */
const WAITING_SUFFIXES: Readonly<Record<string, 'list' | 'zset'>> = {
  wait: 'list',
  paused: 'list',
  prioritized: 'zset',
  delayed: 'zset',
  'waiting-children': 'zset',
};

/**
 * Jobs waiting anywhere under the stack's prefix: every BullMQ `wait`/`paused` list and
 * `prioritized`/`delayed`/`waiting-children` set, of every queue (one per model or not), with
 * the keys that hold them, for failure messages.
 */
export async function waitingJobs(stack: Stack): Promise<{ total: number; keys: Record<string, number> }> {
  const keys: Record<string, number> = {};
  let cursor = '0';
  do {
    const [next, found] = await stack.redis.scan(cursor, 'MATCH', `${stack.prefix}:*`, 'COUNT', 1000);
    cursor = next;
    for (const key of found) {
      const kind = WAITING_SUFFIXES[key.slice(key.lastIndexOf(':') + 1)];
      if (kind === undefined) {
        continue;
      }
      const type = await stack.redis.type(key);
      if (type === 'list') {
        keys[key] = await stack.redis.llen(key);
      } else if (type === 'zset') {
        keys[key] = await stack.redis.zcard(key);
      }
    }
  } while (cursor !== '0');
  return { total: Object.values(keys).reduce((a, b) => a + b, 0), keys };
}

/**
 * Until at least `n` requests for `model` wait for capacity, seen either in the gateway's
 * gauge or in Redis (so that a test's precondition does not hang on the metric alone; the
 * metric has a test of its own).
 */
export async function waitForWaiting(stack: Stack, base: string, model: string, n: number, timeoutMs = 5_000) {
  await waitUntil(
    `${n} requests for ${model} waiting for capacity`,
    async () => ((await waitingGauge(base, model)) ?? 0) >= n || (await waitingJobs(stack)).total >= n,
    timeoutMs,
    25,
  );
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
