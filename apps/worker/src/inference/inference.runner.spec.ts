import {
  AppConfig,
  buildRouterConfig,
  Clock,
  COMPLETION_JOB_VERSION,
  parseEnv,
  redisNames,
  type CompletionJobData,
  type RelayMessage,
} from '@app/common';
import type { ServerRedis } from '@nestjs/microservices';
import Redis from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FAKE_UPSTREAM_KNOBS, type FakeUpstream, startFakeUpstream } from '../../../../test/support/fake-upstream';
import { deleteByPrefix, freePort, REDIS_URL, uniquePrefix } from '../../../../test/support/stack';
import { BackendRegistry } from '../backends/backend.registry';
import { CancellationRegistry } from '../control/cancellation.registry';
import { WorkerUsageService } from '../usage/worker-usage.service';
import { WorkerIdentity } from '../worker-identity';
import { DeploymentPicker } from './deployment.picker';
import { InferenceRunner } from './inference.runner';
import { RelayOutbox } from './relay.outbox';
import { JobWatchdog } from './job.watchdog';

/** The runner against real Redis pub/sub and a real upstream; only the gateway is absent. */
describe('InferenceRunner', () => {
  const prefix = uniquePrefix('runner');
  let upstream: FakeUpstream;
  let publisher: Redis;
  let subscriber: Redis;
  let runner: InferenceRunner;
  let cancellations: CancellationRegistry;
  let backends: BackendRegistry;
  const inbox = `${prefix}:relay:test`;
  const received = new Map<string, RelayMessage[]>();
  let usageLog = '';

  beforeAll(async () => {
    upstream = await startFakeUpstream();
    const deadPort = await freePort();
    const knobs = [...FAKE_UPSTREAM_KNOBS];
    const router = buildRouterConfig(
      {
        model_list: [
          { model_name: 'flaky', litellm_params: { model: 'openai/x', api_base: `http://127.0.0.1:${deadPort}/v1` } },
          {
            model_name: 'flaky',
            litellm_params: { model: 'openai/x', api_base: upstream.url, extra_body_allowed: knobs },
          },
          {
            model_name: 'up',
            litellm_params: { model: 'openai/x', api_base: upstream.url, extra_body_allowed: knobs },
          },
          {
            model_name: 'bad-request',
            litellm_params: { model: 'openai/x', api_base: upstream.url, extra_body_allowed: knobs },
          },
          { model_name: 'slow', litellm_params: { model: 'simulator/lorem', ttft_ms: 5_000 } },
        ],
      },
      {},
    );
    const config = new AppConfig(parseEnv({ AQUEDUCT_REDIS_PREFIX: prefix, REDIS_URL }), router);
    publisher = new Redis(REDIS_URL);
    subscriber = new Redis(REDIS_URL);
    subscriber.on('message', (_c: string, raw: string) => {
      // The jobs below accept batches (replyBatched): one PUBLISH may carry several messages.
      const parsed = JSON.parse(raw) as RelayMessage | RelayMessage[];
      for (const msg of Array.isArray(parsed) ? parsed : [parsed]) {
        received.set(msg.rid, [...(received.get(msg.rid) ?? []), msg]);
      }
    });
    await subscriber.subscribe(inbox);
    cancellations = new CancellationRegistry(config, {} as ServerRedis);
    backends = new BackendRegistry(15_000);
    usageLog = redisNames(prefix).usageLog;
    const identity = new WorkerIdentity();
    const usage = new WorkerUsageService(config, new Clock(), publisher, identity);
    const clock = new Clock();
    const picker = new DeploymentPicker(config, clock, publisher);
    const watchdog = new JobWatchdog(config, clock, picker, publisher);
    const outbox = new RelayOutbox(publisher);
    runner = new InferenceRunner(
      config,
      clock,
      identity,
      cancellations,
      backends,
      usage,
      picker,
      watchdog,
      outbox,
      publisher,
    );
  });

  afterAll(async () => {
    await backends.onApplicationShutdown();
    await deleteByPrefix(publisher, prefix);
    await Promise.all([publisher.quit(), subscriber.quit(), upstream.close()]);
  });

  const job = (rid: string, model: string, params: Record<string, unknown>, stream = true): CompletionJobData => ({
    v: COMPLETION_JOB_VERSION,
    rid,
    op: 'completion',
    att: 0,
    replyTo: inbox,
    replyBatched: true,
    model,
    stream,
    params,
    deadline: Date.now() + 10_000,
    queueDeadline: Date.now() + 10_000,
    tokenId: 'tok_test',
    priority: 'normal',
    meta: {
      route: '/v1/completions',
      startedAt: Date.now(),
      ip: '127.0.0.1',
      userAgent: 'spec',
      user: null,
      userId: 'u1',
    },
  });

  async function messages(rid: string): Promise<RelayMessage[]> {
    for (let i = 0; i < 50 && !received.get(rid)?.some((m) => ['done', 'error', 'result'].includes(m.t)); i++) {
      await new Promise((r) => setTimeout(r, 20));
    }
    return received.get(rid) ?? [];
  }

  it('fails over to the next deployment when the first refuses connections', async () => {
    // Round robin starts at deployment 0 (the dead one) for the first request.
    const result = await runner.run(job('failover', 'flaky', { prompt: 'a b', max_tokens: 5 }));
    const msgs = await messages('failover');
    expect(result).toEqual({ outcome: 'ok', deployment: 'flaky#1' });
    expect(msgs.map((m) => m.t)).toEqual(['start', 'chunk', 'chunk', 'chunk', 'done']);
    expect(msgs.map((m) => m.seq)).toEqual([0, 1, 2, 3, 4]);
  });

  it('sends one error after the first token and never fails over mid-stream', async () => {
    const before = upstream.requests.length;
    const result = await runner.run(
      job('mid', 'up', { prompt: 'a b c d', fake_itl_ms: 20, fake_fail: 'reset-after:2' }),
    );
    const msgs = await messages('mid');
    expect(result.outcome).toBe('error');
    expect(msgs.filter((m) => m.t === 'chunk')).toHaveLength(2);
    expect(msgs.at(-1)).toMatchObject({ t: 'error', status: 502 });
    expect(upstream.requests.length - before).toBe(1);
  });

  it('passes a client error through without failover', async () => {
    const result = await runner.run(job('ctx', 'bad-request', { prompt: 'x', fake_fail: 'context-length' }, false));
    const msgs = await messages('ctx');
    expect(result).toMatchObject({ outcome: 'error', status: 400 });
    expect(msgs.at(-1)).toMatchObject({ t: 'error', status: 400, error: { code: 'context_length_exceeded' } });
  });

  it('returns a non-stream result in one message', async () => {
    await runner.run(job('whole', 'up', { prompt: 'x y', max_tokens: 8 }, false));
    const msgs = await messages('whole');
    expect(msgs.map((m) => m.t)).toEqual(['start', 'result']);
    expect(msgs[1]).toMatchObject({ t: 'result', output: [{ index: 0, text: ' echo: x y', finish_reason: 'stop' }] });
  });

  it('stops promptly and silently when the request is cancelled', async () => {
    const started = Date.now();
    const run = runner.run(job('cancel-me', 'slow', { prompt: 'x' }));
    await new Promise((r) => setTimeout(r, 100));
    cancellations.cancel('cancel-me', 'client_disconnected');
    expect(await run).toEqual({ outcome: 'cancelled', deployment: 'slow#0' });
    expect(Date.now() - started).toBeLessThan(1_000);
    expect((await messages('cancel-me')).map((m) => m.t)).toEqual(['start']);
  });

  it('drops a job cancelled before pickup', async () => {
    cancellations.cancel('early', 'client_disconnected');
    expect(await runner.run(job('early', 'up', { prompt: 'x' }))).toEqual({ outcome: 'cancelled' });
  });

  // A fresh job starts its call while the claim is in flight; losing the claim stops it.
  it('stops a fresh job at once when its gateway had withdrawn it: only `start` relayed, no usage record', async () => {
    await publisher.set(redisNames(prefix).claim('gone', 0), 'gateway', 'PX', 60_000);
    const started = Date.now();
    const run = runner.run(job('gone', 'up', { prompt: 'x', fake_ttft_ms: 3_000 }));
    expect(await run).toEqual({ outcome: 'cancelled' });
    // Whether or not the call had gone out before the claim's answer, it ended long before its first token.
    expect(Date.now() - started).toBeLessThan(1_000);
    expect((await messages('gone')).map((m) => m.t)).toEqual(['start']);
    const log = await publisher.xrange(usageLog, '-', '+');
    expect(log.some(([, f]) => (f[1] ?? '').includes('"gone"'))).toBe(false);
  });

  it('claims a job near its queue deadline before calling the upstream: a withdrawn one never reaches it', async () => {
    await publisher.set(redisNames(prefix).claim('timed-out', 0), 'gateway', 'PX', 60_000);
    const before = upstream.requests.length;
    const nearDeadline = { ...job('timed-out', 'up', { prompt: 'x' }, false), queueDeadline: Date.now() + 300 };
    expect(await runner.run(nearDeadline)).toEqual({ outcome: 'cancelled' });
    await new Promise((r) => setTimeout(r, 100));
    expect(upstream.requests.length).toBe(before);
  });

  it('reports 504 when the deadline passes', async () => {
    const expired = { ...job('late', 'slow', { prompt: 'x' }), deadline: Date.now() + 200 };
    const result = await runner.run(expired);
    const msgs = await messages('late');
    expect(result).toMatchObject({ outcome: 'expired', status: 504 });
    expect(msgs.at(-1)).toMatchObject({ t: 'error', status: 504, error: { code: 'timeout' } });
  });

  it('refuses a job version it does not know with a clear error', async () => {
    const bad = { ...job('v99', 'up', { prompt: 'x' }), v: 99 } as unknown as CompletionJobData;
    await runner.run(bad);
    expect((await messages('v99')).at(-1)).toMatchObject({ t: 'error', status: 500 });
  });

  it('writes one usage record per job, with real or estimated usage and the outcome', async () => {
    const records = async () =>
      (await publisher.xrange(usageLog, '-', '+')).map(([, f]) => JSON.parse(f[1] ?? '{}') as Record<string, unknown>);
    const byRid = (all: Record<string, unknown>[], rid: string) => all.find((r) => r.rid === rid);
    const all = await records();
    expect(byRid(all, 'whole')).toMatchObject({
      outcome: 'ok',
      status: 200,
      model: 'up',
      deployment: 'up#0',
      token_id: 'tok_test',
      user_id: 'u1',
      usage_estimated: false,
      op: 'completion',
      route: '/v1/completions',
    });
    expect(byRid(all, 'whole')?.completion_tokens).toBeGreaterThan(0);
    expect(byRid(all, 'cancel-me')).toMatchObject({ outcome: 'client_disconnected', status: 499 });
    expect(byRid(all, 'late')).toMatchObject({ outcome: 'timeout', status: 504 });
    expect(byRid(all, 'ctx')).toMatchObject({ outcome: 'error', status: 400 });
    // The mid-stream failure sent 2 tokens and no usage: they are counted, marked as estimated.
    expect(byRid(all, 'mid')).toMatchObject({ outcome: 'error', completion_tokens: 2, usage_estimated: true });
    // And the token's rate-limit window holds the tokens.
    const window = await publisher.hgetall(redisNames(prefix).limiter('tok_test'));
    const output = Object.entries(window)
      .filter(([k]) => k.startsWith('o:'))
      .reduce((n, [, v]) => n + Number(v), 0);
    expect(output).toBe(all.reduce((n, r) => n + (r.completion_tokens as number), 0));
  });
});
