import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type FakeUpstream, startFakeUpstream } from '../support/fake-upstream';
import { postCompletion } from '../support/http';
import { simulatorDeployment, upstreamDeployment, writeModelList } from '../support/router-config';
import { freePort, type ProcessHandle, Stack } from '../support/stack';
import { parsePrometheus, type Sample } from '../support/prometheus';

/**
 * Operations, items 2 and 3: Prometheus metrics on the gateway (`/metrics`) and on each
 * worker's own port, counters that move with traffic, a worker whose metrics port is
 * taken keeps working, and `/ready` turns 503 when the last worker stops.
 */

/** Sum of a metric's samples whose labels include `match`. */
function total(samples: Sample[], name: string, match: Record<string, string> = {}): number {
  return samples
    .filter((s) => s.name === name && Object.entries(match).every(([k, v]) => s.labels[k] === v))
    .reduce((n, s) => n + s.value, 0);
}

async function scrape(url: string): Promise<{ text: string; samples: Sample[]; type: string | null }> {
  const res = await fetch(url);
  expect(res.status).toBe(200);
  const text = await res.text();
  return { text, samples: parsePrometheus(text), type: res.headers.get('content-type') };
}

async function waitFor<T>(what: string, probe: () => Promise<T | undefined>, timeoutMs = 10_000): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const value = await probe();
    if (value !== undefined) {
      return value;
    }
    if (Date.now() > until) {
      throw new Error(`timed out waiting for ${what}`);
    }
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe('metrics and readiness', () => {
  let upstream: FakeUpstream;
  let stack: Stack;
  let key: string;
  let workerMetricsPort: number;
  const workerUrl = () => `http://127.0.0.1:${workerMetricsPort}/metrics`;
  const gatewayUrl = () => `${stack.baseUrl}/metrics`;

  const complete = (body: Record<string, unknown>, signal?: AbortSignal) =>
    postCompletion(stack.baseUrl, key, body, signal);

  beforeAll(async () => {
    upstream = await startFakeUpstream();
    const deadPort = await freePort();
    const config = writeModelList(
      simulatorDeployment('sim', 'lorem', { itl_ms: 1 }),
      simulatorDeployment('slow', 'lorem', { ttft_ms: 5000 }),
      upstreamDeployment('flaky', `http://127.0.0.1:${deadPort}/v1`, { model: 'openai/fake' }),
      upstreamDeployment('flaky', upstream.url, { model: 'openai/fake' }),
    );
    workerMetricsPort = await freePort();
    stack = await Stack.start('ops-metrics', {
      routerConfig: config,
      workerEnv: { WORKER_METRICS_PORT: String(workerMetricsPort), WORKER_METRICS_HOST: '127.0.0.1' },
    });
    key = await stack.createKey();
  });

  afterAll(async () => {
    await stack?.stop();
    await upstream?.close();
  });

  it('exposes the gateway metrics in Prometheus text format', async () => {
    const { text, type } = await scrape(gatewayUrl());
    expect(type).toBe('text/plain; version=0.0.4; charset=utf-8');
    for (const name of [
      'aqueduct_http_requests_total',
      'aqueduct_http_request_duration_seconds',
      'aqueduct_time_to_first_token_seconds',
      'aqueduct_cancellations_total',
      'aqueduct_queue_jobs',
      'aqueduct_workers_alive',
      'process_cpu_seconds_total',
    ]) {
      expect(text).toContain(`# TYPE ${name} `);
    }
    expect(text).toContain('# TYPE aqueduct_http_request_duration_seconds histogram');
    const samples = parsePrometheus(text);
    expect(total(samples, 'aqueduct_workers_alive')).toBe(1);
    for (const state of ['waiting', 'active', 'delayed']) {
      expect(samples.some((s) => s.name === 'aqueduct_queue_jobs' && s.labels.state === state)).toBe(true);
    }
  });

  it('counts requests by route, model and status, with latency and TTFT histograms', async () => {
    const before = parsePrometheus((await scrape(gatewayUrl())).text);
    const ok = { route: '/v1/completions', model: 'sim', status: '200' };
    const whole = await complete({ model: 'sim', prompt: 'a b', max_tokens: 4 });
    expect(whole.status).toBe(200);
    await whole.text();
    const stream = await complete({ model: 'sim', prompt: 'a b', max_tokens: 4, stream: true });
    await stream.text();
    const missing = await complete({ model: 'no-such-model', prompt: 'x' });
    expect(missing.status).toBe(404);
    await missing.text();

    const after = parsePrometheus((await scrape(gatewayUrl())).text);
    const delta = (name: string, labels: Record<string, string>) =>
      total(after, name, labels) - total(before, name, labels);
    expect(delta('aqueduct_http_requests_total', ok)).toBe(2);
    expect(delta('aqueduct_http_requests_total', { route: '/v1/completions', status: '404', model: '' })).toBe(1);
    expect(delta('aqueduct_http_request_duration_seconds_count', ok)).toBe(2);
    expect(delta('aqueduct_http_request_duration_seconds_bucket', { ...ok, le: '+Inf' })).toBe(2);
    expect(delta('aqueduct_time_to_first_token_seconds_count', { model: 'sim' })).toBe(1);
    // Buckets are cumulative.
    const buckets = after
      .filter((s) => s.name === 'aqueduct_http_request_duration_seconds_bucket')
      .filter((s) => s.labels.route === '/v1/completions' && s.labels.status === '200' && s.labels.model === 'sim');
    expect(buckets.length).toBeGreaterThan(5);
    expect(buckets.map((b) => b.value)).toEqual([...buckets.map((b) => b.value)].sort((a, b) => a - b));
  });

  it('exposes worker metrics on the worker port: jobs, tokens in and out, TTFT', async () => {
    const before = parsePrometheus((await scrape(workerUrl())).text);
    const res = await complete({ model: 'sim', prompt: 'one two three', max_tokens: 5 });
    const usage = ((await res.json()) as { usage: { prompt_tokens: number; completion_tokens: number } }).usage;
    const job = { model: 'sim', deployment: 'sim#0' };
    const after = await waitFor('the job in the worker metrics', async () => {
      const s = parsePrometheus((await scrape(workerUrl())).text);
      return total(s, 'aqueduct_worker_jobs_total', job) > total(before, 'aqueduct_worker_jobs_total', job)
        ? s
        : undefined;
    });
    const delta = (name: string, labels: Record<string, string>) =>
      total(after, name, labels) - total(before, name, labels);
    expect(delta('aqueduct_worker_jobs_total', { ...job, outcome: 'ok', status: '200' })).toBe(1);
    expect(delta('aqueduct_worker_tokens_total', { ...job, kind: 'prompt' })).toBe(usage.prompt_tokens);
    expect(delta('aqueduct_worker_tokens_total', { ...job, kind: 'completion' })).toBe(usage.completion_tokens);
    expect(delta('aqueduct_worker_time_to_first_token_seconds_count', job)).toBe(1);
    expect(delta('aqueduct_worker_request_duration_seconds_count', job)).toBe(1);
    expect(total(after, 'aqueduct_worker_concurrency')).toBe(64);
    // The gateway reads the heartbeats' capacity.
    const gateway = parsePrometheus((await scrape(gatewayUrl())).text);
    expect(total(gateway, 'aqueduct_workers_slots', { state: 'total' })).toBe(64);
  });

  it('counts upstream errors by deployment, failovers included', async () => {
    const before = parsePrometheus((await scrape(workerUrl())).text);
    // The first request of a model starts at its first deployment: the dead one.
    const res = await complete({ model: 'flaky', prompt: 'x y', max_tokens: 4 });
    expect(res.status).toBe(200);
    await res.text();
    const after = await waitFor('the failover in the worker metrics', async () => {
      const s = parsePrometheus((await scrape(workerUrl())).text);
      return total(s, 'aqueduct_worker_jobs_total', { model: 'flaky' }) >
        total(before, 'aqueduct_worker_jobs_total', { model: 'flaky' })
        ? s
        : undefined;
    });
    const errors = (s: Sample[]) => total(s, 'aqueduct_worker_upstream_errors_total', { deployment: 'flaky#0' });
    expect(errors(after) - errors(before)).toBe(1);
    expect(total(after, 'aqueduct_worker_jobs_total', { deployment: 'flaky#1', outcome: 'ok' })).toBe(1);
  });

  it('counts cancellations on both sides when a client goes away', async () => {
    const gBefore = parsePrometheus((await scrape(gatewayUrl())).text);
    const wBefore = parsePrometheus((await scrape(workerUrl())).text);
    const abort = new AbortController();
    const pending = complete({ model: 'slow', prompt: 'x', max_tokens: 2, stream: true }, abort.signal).catch(
      () => undefined,
    );
    await waitFor('the job to start', async () => {
      const s = parsePrometheus((await scrape(workerUrl())).text);
      return total(s, 'aqueduct_worker_active_jobs') === 1 ? true : undefined;
    });
    const queue = parsePrometheus((await scrape(gatewayUrl())).text);
    expect(total(queue, 'aqueduct_queue_jobs', { state: 'active' })).toBe(1);
    abort.abort();
    await pending;
    const gAfter = await waitFor('the cancel in the gateway metrics', async () => {
      const s = parsePrometheus((await scrape(gatewayUrl())).text);
      const key = { reason: 'client_disconnected' };
      return total(s, 'aqueduct_cancellations_total', key) > total(gBefore, 'aqueduct_cancellations_total', key)
        ? s
        : undefined;
    });
    const closed = { route: '/v1/completions', model: 'slow', status: '499' };
    expect(total(gAfter, 'aqueduct_http_requests_total', closed)).toBe(
      total(gBefore, 'aqueduct_http_requests_total', closed) + 1,
    );
    await waitFor('the cancellation in the worker metrics', async () => {
      const s = parsePrometheus((await scrape(workerUrl())).text);
      const m = { model: 'slow' };
      return total(s, 'aqueduct_worker_cancellations_total', m) >
        total(wBefore, 'aqueduct_worker_cancellations_total', m)
        ? true
        : undefined;
    });
  });

  it('keeps a worker whose metrics port is taken running, with a warning', async () => {
    const clash = stack.addWorker({ WORKER_METRICS_PORT: String(workerMetricsPort), WORKER_METRICS_HOST: '127.0.0.1' });
    await waitFor('the warning', () =>
      Promise.resolve(/metrics port .* is not available/.test(clash.output()) ? true : undefined),
    );
    const workers = await waitFor('two live workers', async () => {
      const s = parsePrometheus((await scrape(gatewayUrl())).text);
      return total(s, 'aqueduct_workers_alive') === 2 ? true : undefined;
    });
    expect(workers).toBe(true);
    expect(clash.child.exitCode).toBeNull();
    const warning = clash
      .output()
      .split('\n')
      .find((l) => l.includes('is not available'));
    expect(JSON.parse(warning ?? '{}')).toMatchObject({
      level: 'warn',
      app: 'worker',
      context: 'WorkerMetrics',
    });
    // The first worker still serves its metrics.
    await scrape(workerUrl());
  });

  it('answers /health always and turns /ready to 503 when the last worker stops', async () => {
    expect((await fetch(`${stack.baseUrl}/ready`)).status).toBe(200);
    const health = await fetch(`${stack.baseUrl}/health`);
    expect(health.status).toBe(200);
    expect(health.headers.get('cache-control')).toBe('no-store');
    const workers: ProcessHandle[] = [...stack.workers];
    await workers[0]?.stop();
    // One worker left: still ready.
    expect((await fetch(`${stack.baseUrl}/ready`)).status).toBe(200);
    // The last one dies without deregistering: its heartbeats simply stop.
    await Promise.all(workers.map((w) => w.stop('SIGKILL')));
    const ready = await waitFor('/ready to fail', async () => {
      const res = await fetch(`${stack.baseUrl}/ready`);
      return res.status === 503 ? res : undefined;
    });
    expect(ready.headers.get('retry-after')).not.toBeNull();
    expect(((await ready.json()) as { error: { code: string } }).error.code).toBe('no_workers');
    expect((await fetch(`${stack.baseUrl}/health`)).status).toBe(200);
    const s = parsePrometheus((await scrape(gatewayUrl())).text);
    expect(total(s, 'aqueduct_workers_alive')).toBe(0);
  });
});
