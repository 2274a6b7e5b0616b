import { request as httpRequest } from 'node:http';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { openStream, postCompletion, sseOf } from '../support/http';
import { PrivateRedis } from '../support/private-redis';
import { usageRecords } from '../support/redis-state';
import { simulatorDeployment, upstreamDeployment, writeModelList } from '../support/router-config';
import { type ProcessHandle, Stack, writeRouterConfig } from '../support/stack';
import { waitUntil } from '../support/wait';

/**
 * Issue 10, items 2-6: running it as operators do. Processes that boot before Redis does and
 * heal by themselves, a gateway that holds no upstream secret, a gateway drain that keeps
 * the port open, one usage record per admitted request whatever dies, and output that is
 * JSON lines from the first to the last, fatal configuration errors included.
 */

const GRACE_MS = 1_500;
/** The shutdown deadline's margin (SHUTDOWN_MARGIN_MS) plus Node's own start and exit. */
const EXIT_SLACK_MS = 2_500;

const stacks: Stack[] = [];
const servers: PrivateRedis[] = [];

afterEach(async () => {
  await Promise.all(stacks.splice(0).map((s) => s.stop().catch(() => undefined)));
  await Promise.all(servers.splice(0).map((r) => r.stop()));
});

afterAll(async () => {
  await Promise.all(servers.map((r) => r.stop()));
});

/** Every non-empty line of a process's stdout and stderr, which must each be one JSON object. */
function outputLines(p: ProcessHandle): string[] {
  return p
    .output()
    .split('\n')
    .filter((l) => l.trim() !== '');
}

function expectJsonLines(p: ProcessHandle, what: string): Record<string, unknown>[] {
  return outputLines(p).map((line) => {
    let parsed: unknown;
    try {
      parsed = JSON.parse(line);
    } catch {
      throw new Error(`${what}: a line that is not JSON: ${line}\n--- all output ---\n${p.output()}`);
    }
    expect(typeof parsed === 'object' && parsed !== null && !Array.isArray(parsed), `${what}: ${line}`).toBe(true);
    return parsed as Record<string, unknown>;
  });
}

/** Waits for the process to exit; returns its exit code (or the signal it died of) and how long it took. */
async function exitOf(p: ProcessHandle, timeoutMs = 15_000): Promise<{ code: number | null; ms: number }> {
  const started = Date.now();
  await waitUntil('the process to exit', () => p.child.exitCode !== null || p.child.signalCode !== null, timeoutMs, 20);
  return { code: p.child.exitCode, ms: Date.now() - started };
}

interface RawHttp {
  status: number;
  headers: Record<string, string | string[] | undefined>;
  body: string;
}

/** One HTTP request on its own connection, headers as the server sent them (Connection included). */
function rawHttp(url: string, method = 'GET', body?: unknown, key?: string): Promise<RawHttp> {
  return new Promise((resolve, reject) => {
    const data = body === undefined ? undefined : JSON.stringify(body);
    const req = httpRequest(
      url,
      {
        method,
        agent: false,
        headers: {
          ...(data !== undefined && { 'content-type': 'application/json', 'content-length': Buffer.byteLength(data) }),
          ...(key !== undefined && { authorization: `Bearer ${key}` }),
        },
      },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (c: string) => (text += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: text }));
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(data);
  });
}

/** Until the gateway answers `/health` (it listens whether or not Redis is there). */
async function listening(stack: Stack, timeoutMs = 10_000): Promise<void> {
  await waitUntil(
    'the gateway to listen',
    () =>
      rawHttp(`${stack.baseUrl}/health`).then(
        (r) => r.status === 200,
        () => false,
      ),
    timeoutMs,
  );
}

/** A long stream from the simulator: `tokens` chunks, `itlMs` apart. */
const slowModel = (itlMs: number) => writeModelList(simulatorDeployment('slow', 'lorem', { itl_ms: itlMs }));
const longStream = (tokens: number) => ({
  model: 'slow',
  prompt: 'tell me a long story',
  max_tokens: tokens,
  stream: true,
});

describe('ops: boot without Redis', () => {
  it('gateway and worker boot while Redis is down, say so in JSON, answer 503, and become ready by themselves', async () => {
    const redis = await PrivateRedis.reserve();
    servers.push(redis);
    const stack = await Stack.launch('ops-boot-noredis', {
      redisUrl: redis.url,
      env: { LOG_LEVEL: 'info', AQUEDUCT_SHUTDOWN_GRACE_MS: String(GRACE_MS) },
    });
    stacks.push(stack);
    const worker = stack.workers[0]!;

    // Listening at once, live, not ready.
    await listening(stack);
    const ready = await rawHttp(`${stack.baseUrl}/ready`);
    expect(ready.status).toBe(503);
    expect(ready.headers['retry-after']).toBeDefined();
    const api = await rawHttp(
      `${stack.baseUrl}/v1/completions`,
      'POST',
      { model: 'sim', prompt: 'x' },
      'sk-aq-' + 'a'.repeat(43),
    );
    expect(api.status).toBe(503);
    expect(api.headers['retry-after']).toBeDefined();
    expect((JSON.parse(api.body) as { error: { type: string } }).error.type).toBe('server_error');

    // Both say they are waiting for Redis, as JSON, and not once per reconnect attempt.
    const waiting = (p: ProcessHandle) => expectJsonLines(p, 'waiting').filter((l) => l.redis_state === 'waiting');
    await waitUntil(
      'both processes to log that they wait for Redis',
      () => waiting(stack.gateway).length > 0 && waiting(worker).length > 0,
    );
    await new Promise((r) => setTimeout(r, 2_000));
    for (const p of [stack.gateway, worker]) {
      const lines = expectJsonLines(p, 'during the outage');
      expect(lines.filter((l) => l.redis_state === 'waiting')).toHaveLength(1);
      // A line per connection role, not one per reconnect attempt (several a second).
      expect(lines.filter((l) => l.context === 'Redis').length, p.output()).toBeLessThan(12);
    }

    // Redis comes: both heal without a restart.
    await redis.restart();
    const key = await stack.createKey();
    await stack.waitReady(20_000);
    const res = await postCompletion(stack.baseUrl, key, { model: 'sim', prompt: 'hello', max_tokens: 3 });
    expect(res.status).toBe(200);
    expect(expectJsonLines(stack.gateway, 'after Redis came').some((l) => l.redis_state === 'connected')).toBe(true);

    // Nothing but JSON, from boot through the outage to a clean SIGTERM shutdown.
    // Exit code 1 would be the shutdown deadline's forced exit; an orderly exit dies of the re-raised signal.
    const [gw, wk] = await Promise.all([stack.gateway.stop('SIGTERM'), worker.stop('SIGTERM')]);
    expect([gw, wk]).not.toContain(1);
    expectJsonLines(stack.gateway, 'gateway');
    expectJsonLines(worker, 'worker');
  }, 60_000);

  it.each(['SIGTERM', 'SIGINT'] as const)(
    '%s while waiting for Redis: both exit within the grace period',
    async (signal) => {
      const redis = await PrivateRedis.reserve();
      const stack = await Stack.launch('ops-boot-signal', {
        redisUrl: redis.url,
        env: { AQUEDUCT_SHUTDOWN_GRACE_MS: String(GRACE_MS) },
      });
      stacks.push(stack);
      servers.push(redis);
      const worker = stack.workers[0]!;
      await listening(stack);
      await new Promise((r) => setTimeout(r, 1_000)); // well into the wait, past the first reconnects
      stack.gateway.child.kill(signal);
      worker.child.kill(signal);
      const [gw, wk] = await Promise.all([exitOf(stack.gateway), exitOf(worker)]);
      expect([gw.code, wk.code]).not.toContain(1);
      expect(gw.ms).toBeLessThan(GRACE_MS + EXIT_SLACK_MS);
      expect(wk.ms).toBeLessThan(GRACE_MS + EXIT_SLACK_MS);
      expectJsonLines(stack.gateway, 'gateway');
      expectJsonLines(worker, 'worker');
      await redis.restart(); // for the stack's own cleanup
    },
    30_000,
  );
});

describe('ops: configuration and secrets', () => {
  it('the gateway boots without the upstream secret; a worker without it exits 1 naming the variable, in JSON', async () => {
    const secretVar = 'AQ_TEST_UPSTREAM_KEY_UNSET';
    const config = writeModelList(
      upstreamDeployment('up', 'http://127.0.0.1:9/v1', { api_key: `os.environ/${secretVar}` }),
      simulatorDeployment('sim', 'echo'),
    );
    const stack = await Stack.launch('ops-secrets', { routerConfig: config, workers: 0 });
    stacks.push(stack);
    await listening(stack, 15_000);

    const worker = stack.addWorker();
    const { code } = await exitOf(worker);
    expect(code).toBe(1);
    const lines = expectJsonLines(worker, 'worker');
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ level: 'fatal' });
    expect(lines[0]!.keys).toContain(secretVar);
    expect(String(lines[0]!.msg)).toContain(secretVar);

    // With the variable set, the worker runs and the gateway serves through it.
    const good = stack.addWorker({ [secretVar]: 'sk-upstream-secret-value' });
    await stack.waitReady(20_000);
    const key = await stack.createKey();
    const res = await postCompletion(stack.baseUrl, key, { model: 'sim', prompt: 'hi', max_tokens: 2 });
    expect(res.status).toBe(200);
    expect(good.output()).not.toContain('sk-upstream-secret-value');
    expectJsonLines(stack.gateway, 'gateway');
  }, 60_000);

  it.each([
    ['an invalid PORT', { PORT: 'abc' }, 'PORT'],
    ['an invalid REDIS_URL', { REDIS_URL: 'http://nope' }, 'REDIS_URL'],
    ['an unreadable router config', { AQUEDUCT_CONFIG: '/nonexistent/router.yaml' }, 'AQUEDUCT_CONFIG'],
    [
      'a router config that is not valid',
      {
        AQUEDUCT_CONFIG: writeRouterConfig(
          'model_list:\n  - model_name: x\n    litellm_params:\n      model: nope/x\n',
        ),
      },
      'AQUEDUCT_CONFIG',
    ],
  ])(
    '%s: gateway and worker exit 1 with one JSON line naming the key',
    async (_what, env, keyName) => {
      const stack = await Stack.launch('ops-badconfig', { env });
      stacks.push(stack);
      for (const p of [stack.gateway, stack.workers[0]!]) {
        const { code } = await exitOf(p);
        expect(code).toBe(1);
        const lines = expectJsonLines(p, keyName);
        expect(lines, p.output()).toHaveLength(1);
        expect(lines[0]).toMatchObject({ level: 'fatal' });
        expect(lines[0]!.keys).toContain(keyName);
        expect(String(lines[0]!.msg)).toContain(keyName);
        expect(p.output()).not.toMatch(/\n\s+at /); // no stack trace for a configuration error
      }
    },
    30_000,
  );
});

describe('ops: graceful gateway shutdown', () => {
  it('SIGTERM: the port stays open, /ready and new API requests 503 with Connection: close, the open stream finishes', async () => {
    const grace = 8_000;
    const stack = await Stack.start('ops-drain', {
      routerConfig: slowModel(50),
      env: { LOG_LEVEL: 'info', AQUEDUCT_SHUTDOWN_GRACE_MS: String(grace) },
    });
    stacks.push(stack);
    const key = await stack.createKey();
    const stream = openStream(stack.baseUrl, key, longStream(60)); // ~3 s
    await waitUntil('the first chunks', () => stream.events.length >= 3);

    const signalledAt = Date.now();
    stack.gateway.child.kill('SIGTERM');
    await waitUntil(
      '/ready to say 503',
      () =>
        rawHttp(`${stack.baseUrl}/ready`).then(
          (r) => r.status === 503,
          () => false,
        ),
      2_000,
    );
    const [health, ready, api] = await Promise.all([
      rawHttp(`${stack.baseUrl}/health`),
      rawHttp(`${stack.baseUrl}/ready`),
      rawHttp(`${stack.baseUrl}/v1/completions`, 'POST', { model: 'slow', prompt: 'x', max_tokens: 2 }, key),
    ]);
    expect(health.status).toBe(200);
    expect(ready.status).toBe(503);
    expect(api.status).toBe(503);
    expect((JSON.parse(api.body) as { error: { code: string } }).error.code).toBe('gateway_shutdown');
    expect(api.headers['retry-after']).toBeDefined();
    for (const r of [health, ready, api]) {
      expect(r.headers.connection).toBe('close');
    }

    // The stream that was open finishes normally, then the gateway exits without waiting out the grace.
    await stream.finished;
    const sse = sseOf(stream);
    expect(sse.errors).toHaveLength(0);
    expect(sse.data.at(-1)).toBe('[DONE]');
    const { code } = await exitOf(stack.gateway);
    expect(code).not.toBe(1); // not the shutdown deadline's forced exit
    expect(Date.now() - signalledAt).toBeLessThan(grace);
    expectJsonLines(stack.gateway, 'gateway');
    expectJsonLines(stack.workers[0]!, 'worker');
  }, 60_000);
});

describe('ops: one usage record per admitted request, whatever dies', () => {
  const recordsOf = async (stack: Stack) => (await usageRecords(stack)).filter((r) => r.model === 'slow');

  it('a worker SIGKILLed mid-stream: the gateway writes the one record, with the tokens relayed and an error outcome', async () => {
    const stack = await Stack.start('ops-usage-lost', {
      routerConfig: slowModel(50),
      env: { AQUEDUCT_IDLE_TIMEOUT_MS: '1500', AQUEDUCT_HEARTBEAT_MS: '300' },
    });
    stacks.push(stack);
    const key = await stack.createKey();
    const stream = openStream(stack.baseUrl, key, longStream(200));
    await waitUntil('some chunks', () => stream.events.length >= 5);
    await stack.workers[0]!.stop('SIGKILL');
    await stream.finished;
    expect(sseOf(stream).errors[0]?.error.code).toBe('worker_lost');

    await waitUntil('a usage record', async () => (await recordsOf(stack)).length > 0);
    await new Promise((r) => setTimeout(r, 1_000));
    const records = await recordsOf(stack);
    expect(records).toHaveLength(1);
    expect(records[0]).toMatchObject({ status: 502, outcome: 'error', usage_estimated: true });
    expect(records[0]!.completion_tokens).toBeGreaterThanOrEqual(5);
    expectJsonLines(stack.gateway, 'gateway');
  }, 60_000);

  it('a client that leaves while its worker is already dead: the gateway writes the one record after the idle timeout', async () => {
    const stack = await Stack.start('ops-usage-both', {
      routerConfig: slowModel(50),
      // Two workers: the live one must not be the one that writes (or skips) this record.
      workers: 2,
      env: { AQUEDUCT_IDLE_TIMEOUT_MS: '1500', AQUEDUCT_HEARTBEAT_MS: '300' },
    });
    stacks.push(stack);
    const key = await stack.createKey();
    const plain = openStream(stack.baseUrl, key, { ...longStream(200), user_id: 'plain' });
    const orphan = openStream(stack.baseUrl, key, { ...longStream(200), user_id: 'orphan' });
    await waitUntil('some chunks', () => plain.events.length >= 3 && orphan.events.length >= 5);
    // A plain disconnect: the live worker writes the exact record; the gateway must not add one.
    plain.abort();
    await waitUntil('the worker to record the plain one', async () =>
      (await recordsOf(stack)).some((r) => r.user_id === 'plain'),
    );
    // The other request's worker dies, and its client leaves before anyone noticed.
    await Promise.all(stack.workers.map((w) => w.stop('SIGKILL')));
    orphan.abort();
    await waitUntil('both records', async () => (await recordsOf(stack)).length >= 2, 10_000);
    // Past another idle timeout: still one record per request.
    await new Promise((r) => setTimeout(r, 3_000));
    const records = await recordsOf(stack);
    const byUser = (u: string) => records.filter((r) => r.user_id === u);
    expect(byUser('plain')).toHaveLength(1);
    expect(byUser('plain')[0]).toMatchObject({ outcome: 'client_disconnected' });
    expect(byUser('orphan')).toHaveLength(1);
    expect(byUser('orphan')[0]).toMatchObject({ status: 499, outcome: 'client_disconnected', usage_estimated: true });
    expect(byUser('orphan')[0]!.completion_tokens).toBeGreaterThanOrEqual(5);
  }, 60_000);

  it('a gateway-side timeout: one record, also when the stuck worker wakes up and finishes later', async () => {
    const stack = await Stack.start('ops-usage-timeout', {
      routerConfig: slowModel(50),
      // The idle timeout is out of the way: the request's own deadline ends it.
      env: { AQUEDUCT_REQUEST_TIMEOUT_MS: '1500', AQUEDUCT_IDLE_TIMEOUT_MS: '30000' },
    });
    stacks.push(stack);
    const key = await stack.createKey();
    const worker = stack.workers[0]!;
    const stream = openStream(stack.baseUrl, key, longStream(200));
    await waitUntil('some chunks', () => stream.events.length >= 3);
    worker.child.kill('SIGSTOP'); // stuck: reports neither its deadline nor anything else
    try {
      await stream.finished;
      expect(sseOf(stream).errors[0]?.error.code).toBe('timeout');
      await waitUntil('the gateway to write the record', async () => (await recordsOf(stack)).length > 0);
    } finally {
      worker.child.kill('SIGCONT');
    }
    // The worker resumes, hits its own deadline and would write a record of its own.
    await waitUntil('the worker to finish the job', () => worker.output().includes('already recorded'), 10_000);
    const records = await recordsOf(stack);
    expect(records).toHaveLength(1);
    expect(records[0]).toMatchObject({ status: 504, outcome: 'timeout', usage_estimated: true });
    expect(records[0]!.completion_tokens).toBeGreaterThanOrEqual(3);
  }, 60_000);
});
