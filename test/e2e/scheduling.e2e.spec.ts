import { randomUUID } from 'node:crypto';
import { modelQueueName } from '@app/common';
import { APIError } from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  expectOpenAIError,
  fakeUpstreamText,
  parseSse,
  rejection,
  sdk,
  streamedText,
} from '../support/contract-helpers';
import { type FakeUpstream, startFakeUpstream } from '../support/fake-upstream';
import { socketOwner, waitForWorkers } from '../support/processes';
import { usageRecords } from '../support/redis-state';
import { simulatorDeployment, upstreamDeployment, writeModelList } from '../support/router-config';
import {
  completionText,
  metricSum,
  queueMsOf,
  scrapeMetrics,
  sleep,
  type TimedResponse,
  timedCompletion,
  waitingGauge,
  waitingJobs,
} from '../support/scheduling';
import { freePort, Stack } from '../support/stack';
import { waitUntil } from '../support/wait';

/**
 * Issue 12: requests wait for capacity in the queue, by priority and in turns across tokens.
 * Real gateway and two real workers (WORKER_CONCURRENCY=4 each, 8 job slots in all) in front
 * of fake upstreams; model `capped` has `max_parallel_requests: 2` and every request to it
 * takes ~300 ms, the issue's own setting. Times are measured here, with margins for a loaded
 * 2-core machine that a missing feature still cannot meet (e.g. a FIFO queue makes the small
 * tenant below take ≥ 2.4 s instead of < 1.5 s).
 */

const CAP = 2;
const SERVICE_MS = 300;
const PER_WORKER = 4;

type Priority = 'high' | 'normal' | 'low';

describe('scheduling: waiting for capacity, by priority and in turns across tokens', () => {
  let capped: FakeUpstream;
  let open: FakeUpstream;
  let fo: FakeUpstream;
  let stack: Stack;

  beforeAll(async () => {
    [capped, open, fo] = await Promise.all([startFakeUpstream(), startFakeUpstream(), startFakeUpstream()]);
    const deadPort = await freePort();
    const config = writeModelList(
      upstreamDeployment('capped', capped.url, { max_parallel_requests: CAP }),
      upstreamDeployment('up', open.url),
      simulatorDeployment('sim', 'echo'),
      // `fo`: the first deployment refuses connections (fails before the first token), the
      // second one serves; both have one slot.
      upstreamDeployment('fo', `http://127.0.0.1:${deadPort}/v1`, { max_parallel_requests: 1 }),
      upstreamDeployment('fo', fo.url, { max_parallel_requests: 1 }),
    );
    stack = await Stack.start('scheduling', {
      routerConfig: config,
      workers: 2,
      // Failures before the first token stay real statuses; streams hold their status until then.
      env: { AQUEDUCT_COMMIT_TIMEOUT_MS: '30000' },
      workerEnv: { WORKER_CONCURRENCY: String(PER_WORKER) },
    });
    await waitForWorkers(stack, 2, 15_000);
  });

  afterAll(async () => {
    await stack?.stop();
    await Promise.all([capped?.close(), open?.close(), fo?.close()]);
  });

  const base = () => stack.baseUrl;
  const cappedBody = (prompt: string, probe: string, ttft = SERVICE_MS) => ({
    model: 'capped',
    prompt,
    fake_ttft_ms: ttft,
    probe,
  });
  /** The order in which the capped upstream received the given probes. */
  const dispatchOrder = (probes: Set<string>) =>
    capped.requests.map((r) => r.body.probe as string).filter((p) => probes.has(p));
  const idle = () => waitUntil('the capped upstream to be idle', () => capped.inFlight() === 0, 10_000);

  it('the cap holds across two workers while a burst waits, and other models keep flowing', async () => {
    const key = await stack.createKey({ name: 'burst' });
    const other = await stack.createKey({ name: 'other' });
    const prompts = Array.from({ length: 20 }, (_, i) => `burst ${i} a b`);
    let burstDone = 0;
    const burst = prompts.map((prompt) =>
      timedCompletion(base(), key, cappedBody(prompt, randomUUID())).finally(() => (burstDone += 1)),
    );
    await waitUntil('the cap to be reached', () => capped.inFlight() === CAP, 5_000);
    await sleep(100); // the whole burst has been admitted by now

    // 20 capped requests would fill all 8 worker slots if they waited in the workers; they
    // wait in the queue instead, so requests for other models are served at once.
    const others: TimedResponse[] = [];
    for (let i = 0; i < 6; i++) {
      const model = i % 2 === 0 ? 'up' : 'sim';
      others.push(await timedCompletion(base(), other, { model, prompt: `other ${i}`, max_tokens: 8 }));
    }
    const doneWhileOthersRan = burstDone;
    const results = await Promise.all(burst);

    for (const [i, res] of others.entries()) {
      expect(res.status, res.text).toBe(200);
      expect(completionText(res), `other ${i}`).toMatch(/\S/);
      expect(res.ms, `request ${i} for ${i % 2 === 0 ? 'up' : 'sim'} behind the capped burst`).toBeLessThan(1_000);
      expect(res.queueMs, `x-aqueduct-queue-ms of request ${i} for another model`).toBeLessThan(200);
    }
    expect(doneWhileOthersRan, 'the other models were measured while the burst still waited').toBeLessThan(16);

    results.forEach((res, i) => {
      expect(res.status, res.text).toBe(200);
      expect(completionText(res)).toBe(fakeUpstreamText(prompts[i]!));
      // The header counts the wait for capacity only, never the ~300 ms of service.
      expect(res.queueMs, `x-aqueduct-queue-ms of burst request ${i}`).toBeGreaterThanOrEqual(0);
      expect(res.queueMs, `queue ms ${res.queueMs} within latency ${res.ms}`).toBeLessThanOrEqual(res.ms - 250);
    });
    const waits = results.map((r) => r.queueMs).sort((a, b) => a - b);
    expect(waits[0], 'the first requests found free capacity').toBeLessThan(200);
    // 18 requests behind 2 slots of 300 ms: the last ones wait ~2.7 s.
    expect(waits.at(-1), 'the last requests waited for capacity').toBeGreaterThan(1_500);

    expect(capped.maxInFlight(), 'never more than the cap at once').toBeLessThanOrEqual(CAP);
    expect(capped.maxInFlight(), 'the cap was reached').toBe(CAP);
    // Which worker takes each job is BullMQ's choice (a worker that finishes a job may fetch
    // the next itself), so both may or may not have served the burst; the cap is the queue's
    // global concurrency in Redis, and it held above whatever the split was.
    const owners = new Set(
      capped.requests.map((r) => socketOwner(r.remotePort!, capped.port, stack.workers)).filter((w) => w !== undefined),
    );
    expect(owners.size, 'the capped requests were served by the stack workers').toBeGreaterThanOrEqual(1);
    // The cap every worker obeys is the model queue's global concurrency, kept in Redis (the
    // queue's meta hash), and the unlimited model's queue has none.
    const meta = (model: string) =>
      stack.redis.hget(`${stack.prefix}:bull:${modelQueueName(model)}:meta`, 'concurrency');
    expect(await meta('capped')).toBe(String(CAP));
    expect(await meta('up')).toBeNull();
  });

  it('a 3-request tenant behind a 14-request backlog of another token finishes in under 1.5 s', async () => {
    await idle();
    const heavy = await stack.createKey({ name: 'heavy' });
    const light = await stack.createKey({ name: 'light' });
    const heavyProbes = Array.from({ length: 14 }, () => randomUUID());
    const backlog = heavyProbes.map((probe, i) => timedCompletion(base(), heavy, cappedBody(`heavy ${i}`, probe)));
    await waitUntil('the cap to be reached', () => capped.inFlight() === CAP, 5_000);
    await sleep(150); // the whole backlog is queued before the light tenant arrives

    const client = sdk(stack, light);
    const lightProbes = [0, 1, 2].map(() => randomUUID());
    const started = Date.now();
    const small = await Promise.all(
      lightProbes.map(async (probe, i) => {
        const params = cappedBody(`light ${i}`, probe);
        const { data, response } = await client.completions.create(params).withResponse();
        return { text: data.choices[0]?.text, queueMs: queueMsOf(response.headers), endedAt: Date.now() };
      }),
    );
    const lightMs = Date.now() - started;
    const heavyResults = await Promise.all(backlog);

    small.forEach((r, i) => expect(r.text).toBe(fakeUpstreamText(`light ${i}`)));
    // Round robin: about one heavy request per light one. FIFO: 12 queued heavy requests
    // first, i.e. ≥ 2.4 s.
    expect(lightMs, 'the light tenant took turns with the heavy one').toBeLessThan(1_500);
    heavyResults.forEach((r) => expect(r.status, r.text).toBe(200));
    const order = dispatchOrder(new Set([...heavyProbes, ...lightProbes]));
    expect(order).toHaveLength(17);
    const lightPositions = lightProbes.map((p) => order.indexOf(p));
    // 2 heavy requests were running; each light request then waits for at most about one
    // heavy request per competing token.
    for (const pos of lightPositions) {
      expect(pos, `dispatch positions of the light requests: ${lightPositions.join(', ')}`).toBeLessThan(CAP + 2 * 3);
    }
    // The heavy backlog itself is still served in full and after the light tenant.
    expect(Math.max(...heavyResults.map((r) => r.endedAt))).toBeGreaterThan(Math.max(...small.map((s) => s.endedAt)));
    expect(capped.maxInFlight()).toBeLessThanOrEqual(CAP);
  });

  it('strict priority: high requests sent after a normal and a low backlog are dispatched and finish first', async () => {
    await idle();
    const keys: Record<Priority, string> = {
      low: await stack.createKey({ name: 'low', priority: 'low' }),
      normal: await stack.createKey({ name: 'normal', priority: 'normal' }),
      high: await stack.createKey({ name: 'high', priority: 'high' }),
    };
    const classOf = new Map<string, Priority>();
    const newProbe = (): string => randomUUID();
    const send = (priority: Priority, n: number, ttft = SERVICE_MS) =>
      Array.from({ length: n }, (_, i) => {
        const probe = newProbe();
        classOf.set(probe, priority);
        return timedCompletion(base(), keys[priority], cappedBody(`${priority} ${i}`, probe, ttft)).then((res) => ({
          res,
          priority,
          probe,
        }));
      });
    // Two low requests take both slots for a second; everything else queues meanwhile:
    // 4 more low, then 5 normal, then (last) 3 high.
    const holders = send('low', 2, 1_000);
    await waitUntil('the low holders to run', () => capped.inFlight() === CAP, 5_000);
    const lows = send('low', 4);
    await sleep(100);
    const normals = send('normal', 5);
    await sleep(100);
    const highs = send('high', 3);
    const all = await Promise.all([...holders, ...lows, ...normals, ...highs]);

    for (const { res } of all) {
      expect(res.status, res.text).toBe(200);
    }
    const holderProbes = new Set((await Promise.all(holders)).map((h) => h.probe));
    const order = dispatchOrder(new Set(classOf.keys())).filter((p) => !holderProbes.has(p));
    // Dispatched by class: high, normal, low. Two slots free up together, so the two requests
    // of one round may reach the upstream in either order: one swap per class boundary at
    // most. (FIFO would make it low, normal, high: 47 inverted pairs.)
    const rank: Record<Priority, number> = { high: 0, normal: 1, low: 2 };
    const classes = order.map((p) => classOf.get(p)!);
    expect(classes).toHaveLength(12);
    let inversions = 0;
    classes.forEach((a, i) => classes.slice(i + 1).forEach((b) => (inversions += rank[a] > rank[b] ? 1 : 0)));
    expect(inversions, `dispatch order ${classes.join(', ')}`).toBeLessThanOrEqual(2);
    expect(classes.slice(0, 2), `dispatch order ${classes.join(', ')}`).toEqual(['high', 'high']);
    expect(classes.slice(-3), `dispatch order ${classes.join(', ')}`).toEqual(['low', 'low', 'low']);
    // And they finish in that order too (but for the one request of the same round).
    const endOf = (p: Priority, from: typeof all) => from.filter((x) => x.priority === p).map((x) => x.res.endedAt);
    const lastHigh = Math.max(...endOf('high', all));
    const lastNormal = Math.max(...endOf('normal', all));
    const waitingLows = await Promise.all(lows);
    const normalsFirst = endOf('normal', all).filter((t) => t < lastHigh).length;
    expect(normalsFirst, 'normal requests done before the last high').toBeLessThanOrEqual(1);
    const lowsFirst = endOf('low', waitingLows).filter((t) => t < lastNormal).length;
    expect(lowsFirst, 'waiting low requests done before the last normal').toBeLessThanOrEqual(1);
    expect(capped.maxInFlight()).toBeLessThanOrEqual(CAP);
  });

  it('x-aqueduct-queue-ms on JSON and SSE responses: ≈0 with free capacity, the wait when it waited; usage records carry queue_ms', async () => {
    await idle();
    const token = await stack.tokens.create({ name: 'queue-ms' });
    const key = token.key;
    // Free capacity: every model answers with a header of about zero.
    const free: TimedResponse[] = [];
    for (const model of ['capped', 'up', 'sim']) {
      free.push(await timedCompletion(base(), key, { model, prompt: 'free capacity', fake_ttft_ms: 0, max_tokens: 8 }));
    }
    for (const res of free) {
      expect(res.status, res.text).toBe(200);
      expect(res.headers.get('x-aqueduct-queue-ms') ?? '(absent)', 'x-aqueduct-queue-ms is an integer').toMatch(
        /^\d+$/,
      );
      expect(res.queueMs).toBeLessThan(200);
    }

    // Both slots held for 700 ms, then a JSON and an SSE request wait for them.
    const holders = [0, 1].map((i) => timedCompletion(base(), key, cappedBody(`hold ${i}`, randomUUID(), 700)));
    await waitUntil('the holders to run', () => capped.inFlight() === CAP, 5_000);
    const waitedJson = timedCompletion(base(), key, cappedBody('waited json', randomUUID()));
    const sentAt = Date.now();
    const streamRes = await fetch(`${base()}/v1/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: JSON.stringify({ ...cappedBody('waited stream', randomUUID()), stream: true }),
    });
    const streamText = await streamRes.text();
    const streamMs = Date.now() - sentAt;
    const json = await waitedJson;
    await Promise.all(holders);

    expect(json.status, json.text).toBe(200);
    expect(completionText(json)).toBe(fakeUpstreamText('waited json'));
    expect(json.queueMs, 'the JSON request waited ~600 ms for a slot').toBeGreaterThan(200);
    expect(json.queueMs).toBeLessThanOrEqual(json.ms - 250);

    expect(streamRes.status, streamText).toBe(200);
    expect(streamRes.headers.get('content-type')).toMatch(/^text\/event-stream/);
    const streamQueueMs = queueMsOf(streamRes.headers);
    expect(
      streamRes.headers.get('x-aqueduct-queue-ms') ?? '(absent)',
      'x-aqueduct-queue-ms on the SSE response',
    ).toMatch(/^\d+$/);
    expect(streamQueueMs, 'the stream waited ~600 ms for a slot').toBeGreaterThan(200);
    expect(streamQueueMs).toBeLessThanOrEqual(streamMs - 250);
    const sse = parseSse(streamText);
    expect(sse.errors).toHaveLength(0);
    expect(streamedText(sse)).toBe(fakeUpstreamText('waited stream'));

    // One usage record per request, each with its queue_ms, agreeing with the header.
    const expected = new Map<string, number>();
    for (const res of [...free, json]) {
      expected.set(res.headers.get('x-request-id')!, res.queueMs);
    }
    expected.set(streamRes.headers.get('x-request-id')!, streamQueueMs);
    let records: Record<string, unknown>[] = [];
    await waitUntil(
      'the usage records of the queue-ms requests',
      async () => {
        records = (await usageRecords(stack)).filter((r) => r.token_id === token.token.id);
        return records.length >= expected.size + 2;
      },
      5_000,
      50,
    );
    for (const [rid, queueMs] of expected) {
      const record = records.find((r) => r.rid === rid);
      expect(record, `usage record of ${rid}`).toBeDefined();
      expect(typeof record?.queue_ms, `queue_ms in ${JSON.stringify(record)}`).toBe('number');
      expect(Number.isInteger(record?.queue_ms)).toBe(true);
      expect(Math.abs((record?.queue_ms as number) - queueMs), `record ${rid} vs header ${queueMs}`).toBeLessThan(100);
    }
    expect(capped.maxInFlight()).toBeLessThanOrEqual(CAP);
  });

  it('metrics: aqueduct_queue_wait_seconds by model and priority, aqueduct_queue_waiting_requests by model', async () => {
    await idle();
    const normal = await stack.createKey({ name: 'metrics-normal' });
    const high = await stack.createKey({ name: 'metrics-high', priority: 'high' });
    const before = (await scrapeMetrics(base())).samples;

    const holders = [0, 1].map((i) => timedCompletion(base(), normal, cappedBody(`hold ${i}`, randomUUID(), 1_500)));
    await waitUntil('the holders to run', () => capped.inFlight() === CAP, 5_000);
    const waiters = [
      timedCompletion(base(), normal, cappedBody('waiting normal', randomUUID())),
      timedCompletion(base(), high, cappedBody('waiting high', randomUUID())),
    ];
    let seenWaiting = 0;
    await waitUntil(
      'aqueduct_queue_waiting_requests{model="capped"} to show the waiting requests',
      async () => {
        seenWaiting = (await waitingGauge(base(), 'capped')) ?? 0;
        return seenWaiting >= 2;
      },
      1_300,
      50,
    );
    const during = await scrapeMetrics(base());
    const results = await Promise.all([...holders, ...waiters]);
    results.forEach((r) => expect(r.status, r.text).toBe(200));

    expect(during.text).toContain('# TYPE aqueduct_queue_wait_seconds histogram');
    expect(during.text).toContain('# TYPE aqueduct_queue_waiting_requests gauge');
    expect(metricSum(during.samples, 'aqueduct_queue_waiting_requests', { model: 'up' }) ?? 0).toBe(0);
    await waitUntil(
      'the waiting gauge of capped to fall back to 0',
      async () => (await waitingGauge(base(), 'capped')) === 0,
      3_000,
      50,
    );

    const after = (await scrapeMetrics(base())).samples;
    const delta = (name: string, labels: Record<string, string>) =>
      (metricSum(after, name, labels) ?? 0) - (metricSum(before, name, labels) ?? 0);
    const normalLabels = { model: 'capped', priority: 'normal' };
    const highLabels = { model: 'capped', priority: 'high' };
    expect(delta('aqueduct_queue_wait_seconds_count', normalLabels)).toBe(3);
    expect(delta('aqueduct_queue_wait_seconds_count', highLabels)).toBe(1);
    expect(delta('aqueduct_queue_wait_seconds_bucket', { ...normalLabels, le: '+Inf' })).toBe(3);
    // The two waiters waited ~1.5 s for the holders' slots.
    expect(delta('aqueduct_queue_wait_seconds_sum', normalLabels)).toBeGreaterThan(0.5);
    expect(delta('aqueduct_queue_wait_seconds_sum', highLabels)).toBeGreaterThan(0.5);
    const buckets = after.filter(
      (s) =>
        s.name === 'aqueduct_queue_wait_seconds_bucket' && s.labels.model === 'capped' && s.labels.priority === 'high',
    );
    expect(buckets.length).toBeGreaterThan(3);
    expect(buckets.map((b) => b.value)).toEqual([...buckets.map((b) => b.value)].sort((a, b) => a - b));
  });

  it('failover before the first token still works with capped deployments', async () => {
    await idle();
    const key = await stack.createKey({ name: 'failover' });
    const probes = [0, 1, 2, 3].map(() => randomUUID());
    const started = Date.now();
    const results = await Promise.all(
      probes.map((probe, i) =>
        timedCompletion(base(), key, {
          model: 'fo',
          prompt: `failover ${i}`,
          fake_ttft_ms: 200,
          probe,
          stream: i % 2 === 1,
        }),
      ),
    );
    const elapsed = Date.now() - started;
    results.forEach((res, i) => {
      expect(res.status, res.text).toBe(200);
      const text = i % 2 === 1 ? streamedText(parseSse(res.text)) : completionText(res);
      expect(text).toBe(fakeUpstreamText(`failover ${i}`));
      expect(res.headers.get('x-aqueduct-queue-ms') ?? '(absent)').toMatch(/^\d+$/);
    });
    // Every request reached the serving deployment exactly once, one at a time.
    for (const probe of probes) {
      expect(fo.requests.filter((r) => r.body.probe === probe)).toHaveLength(1);
    }
    expect(fo.maxInFlight()).toBe(1);
    expect(elapsed, 'four 200 ms requests through one slot, plus failovers').toBeLessThan(5_000);
  });
});

describe('scheduling: the wait limit (AQUEDUCT_MAX_QUEUE_WAIT_MS)', () => {
  const MAX_WAIT_MS = 2_500;
  const COMMIT_MS = 800;
  /** Model `brief`: one slot and a deployment timeout (1.5 s) shorter than the wait limit. */
  const BRIEF_TIMEOUT_MS = 1_500;
  let capped: FakeUpstream;
  let brief: FakeUpstream;
  let stack: Stack;

  beforeAll(async () => {
    [capped, brief] = await Promise.all([startFakeUpstream(), startFakeUpstream()]);
    stack = await Stack.start('scheduling-wait', {
      routerConfig: writeModelList(
        upstreamDeployment('capped', capped.url, { max_parallel_requests: CAP }),
        upstreamDeployment('brief', brief.url, { max_parallel_requests: 1, timeout: BRIEF_TIMEOUT_MS / 1000 }),
      ),
      workers: 2,
      env: { AQUEDUCT_MAX_QUEUE_WAIT_MS: String(MAX_WAIT_MS), AQUEDUCT_COMMIT_TIMEOUT_MS: String(COMMIT_MS) },
      workerEnv: { WORKER_CONCURRENCY: String(PER_WORKER) },
    });
    await waitForWorkers(stack, 2, 15_000);
  });

  afterAll(async () => {
    await stack?.stop();
    await Promise.all([capped?.close(), brief?.close()]);
  });

  const probesSeen = (probes: Iterable<string>) => {
    const wanted = new Set(probes);
    return capped.requests.filter((r) => wanted.has(r.body.probe as string)).map((r) => r.body.probe as string);
  };

  interface Outcome {
    index: number;
    probe: string;
    status: number;
    code: string | null | undefined;
    type: string | undefined;
    retryAfter: string | null;
    queueMs: number;
    ms: number;
    text: string | undefined;
    raw?: TimedResponse;
  }

  it('30 requests into a 2.5 s wait limit: the tail gets 503 queue_timeout with Retry-After, the upstream saw exactly the served ones', async () => {
    const key = await stack.createKey({ name: 'burst' });
    const client = sdk(stack, key);
    const pending: Promise<Outcome>[] = [];
    for (let index = 0; index < 30; index++) {
      const probe = randomUUID();
      const body = { model: 'capped', prompt: `burst ${index}`, fake_ttft_ms: SERVICE_MS, probe };
      if (index % 3 === 0) {
        // Every third through the official SDK.
        const sentAt = Date.now();
        pending.push(
          client.completions
            .create(body)
            .withResponse()
            .then(
              ({ data, response }): Outcome => ({
                index,
                probe,
                status: response.status,
                code: undefined,
                type: undefined,
                retryAfter: response.headers.get('retry-after'),
                queueMs: queueMsOf(response.headers),
                ms: Date.now() - sentAt,
                text: data.choices[0]?.text,
              }),
              (err: unknown): Outcome => {
                if (!(err instanceof APIError)) {
                  throw err;
                }
                return {
                  index,
                  probe,
                  status: err.status ?? 0,
                  code: err.code,
                  type: err.type,
                  retryAfter: err.headers?.get('retry-after') ?? null,
                  queueMs: err.headers === undefined ? Number.NaN : queueMsOf(err.headers),
                  ms: Date.now() - sentAt,
                  text: undefined,
                };
              },
            ),
        );
      } else {
        pending.push(
          timedCompletion(stack.baseUrl, key, body).then((res): Outcome => {
            const error = (res.json as { error?: { code?: string | null; type?: string } } | undefined)?.error;
            return {
              index,
              probe,
              status: res.status,
              code: error?.code,
              type: error?.type,
              retryAfter: res.headers.get('retry-after'),
              queueMs: res.queueMs,
              ms: res.ms,
              text: completionText(res),
              raw: res,
            };
          }),
        );
      }
      await sleep(5); // arrival order = index order
    }
    const outcomes = await Promise.all(pending);
    const served = outcomes.filter((o) => o.status === 200);
    const refused = outcomes.filter((o) => o.status !== 200);
    const summary = outcomes.map((o) => `${o.index}:${o.status}@${o.ms}ms`).join(' ');

    // 2 slots × 300 ms in 2.5 s: about 16 served, the rest refused at the limit.
    expect(served.length, summary).toBeGreaterThanOrEqual(8);
    expect(refused.length, summary).toBeGreaterThanOrEqual(8);
    for (const o of served) {
      expect(o.text).toBe(fakeUpstreamText(`burst ${o.index}`));
      expect(o.queueMs, `request ${o.index} waited at most the limit`).toBeLessThanOrEqual(MAX_WAIT_MS + 100);
      expect(o.ms).toBeLessThan(MAX_WAIT_MS + SERVICE_MS + 1_500);
    }
    for (const o of refused) {
      expect(o.status, summary).toBe(503);
      expect(o.code).toBe('queue_timeout');
      expect(o.type).toBe('server_error');
      expect(o.retryAfter, `Retry-After of request ${o.index}`).toMatch(/^\d+$/);
      expect(Number(o.retryAfter)).toBeGreaterThanOrEqual(1);
      expect(o.ms, `request ${o.index} refused after about ${MAX_WAIT_MS} ms`).toBeGreaterThanOrEqual(
        MAX_WAIT_MS - 100,
      );
      expect(o.ms, `request ${o.index} refused after about ${MAX_WAIT_MS} ms`).toBeLessThan(MAX_WAIT_MS + 1_500);
      // The 503 of an admitted request also says how long it waited.
      expect(o.queueMs, `x-aqueduct-queue-ms of refused request ${o.index}`).toBeGreaterThanOrEqual(MAX_WAIT_MS - 200);
      if (o.raw !== undefined) {
        expectOpenAIError(o.raw, 503, { type: 'server_error', code: 'queue_timeout' });
      }
    }
    // The head is served, the tail refused. Not exactly a prefix: at the boundary a request
    // that arrived a few ms later (SDK requests carry more client overhead than fetch ones)
    // still has time left when a slot frees just after an earlier one reached the limit.
    expect(
      outcomes.slice(0, 8).map((o) => o.status),
      summary,
    ).toEqual(Array<number>(8).fill(200));
    expect(outcomes.slice(-10).filter((o) => o.status === 503).length, summary).toBeGreaterThanOrEqual(6);

    // The upstream saw exactly the served requests, each once, also a while later.
    await sleep(600);
    const seen = probesSeen(outcomes.map((o) => o.probe));
    expect([...seen].sort()).toEqual(served.map((o) => o.probe).sort());
    expect(capped.maxInFlight()).toBeLessThanOrEqual(CAP);
    await waitUntil('no job left waiting', async () => (await waitingJobs(stack)).total === 0, 3_000, 50);
  });

  it('a stream committed during the wait gets queue_timeout in band; a JSON request gets the 503', async () => {
    const key = await stack.createKey({ name: 'committed' });
    const holdProbes = [randomUUID(), randomUUID()];
    // Both slots held past the wait limit.
    const holders = holdProbes.map((probe, i) =>
      timedCompletion(stack.baseUrl, key, { model: 'capped', prompt: `hold ${i}`, fake_ttft_ms: 4_000, probe }),
    );
    await waitUntil('the holders to run', () => capped.inFlight() === CAP, 5_000);

    const jsonProbe = randomUUID();
    const jsonBody = { model: 'capped', prompt: 'json waiter', probe: jsonProbe };
    const jsonWaiter = rejection(sdk(stack, key).completions.create(jsonBody));
    jsonWaiter.catch(() => undefined); // judged below; not an unhandled rejection if an earlier check fails
    const streamProbe = randomUUID();
    const sentAt = Date.now();
    const res = await fetch(`${stack.baseUrl}/v1/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'capped', prompt: 'stream waiter', stream: true, probe: streamProbe }),
    });
    const committedAfter = Date.now() - sentAt;
    const text = await res.text();
    const endedAfter = Date.now() - sentAt;

    // Committed by the keep-alive after AQUEDUCT_COMMIT_TIMEOUT_MS, long before the limit.
    expect(res.status).toBe(200);
    expect(res.headers.get('content-type')).toMatch(/^text\/event-stream/);
    expect(committedAfter).toBeGreaterThanOrEqual(COMMIT_MS - 100);
    expect(committedAfter).toBeLessThan(MAX_WAIT_MS - 500);
    expect(res.headers.get('x-aqueduct-queue-ms') ?? '(absent)', 'x-aqueduct-queue-ms on the committed stream').toMatch(
      /^\d+$/,
    );
    expect(queueMsOf(res.headers)).toBeLessThanOrEqual(committedAfter + 50);
    const sse = parseSse(text);
    expect(sse.chunks, 'no completion chunk').toHaveLength(0);
    expect(sse.errors, text).toHaveLength(1);
    expect(sse.errors[0]?.error).toMatchObject({ type: 'server_error', code: 'queue_timeout' });
    expect(sse.data.at(-1)).toBe('[DONE]');
    expect(endedAfter, 'the error came at the wait limit').toBeGreaterThanOrEqual(MAX_WAIT_MS - 100);
    expect(endedAfter).toBeLessThan(MAX_WAIT_MS + 1_500);

    const err = await jsonWaiter;
    expect(err.status).toBe(503);
    expect(err.code).toBe('queue_timeout');
    expect(err.type).toBe('server_error');
    expect(Number(err.headers?.get('retry-after'))).toBeGreaterThanOrEqual(1);

    const held = await Promise.all(holders);
    held.forEach((h) => expect(h.status, h.text).toBe(200));
    await sleep(500);
    expect(probesSeen([jsonProbe, streamProbe]), 'the upstream never saw the refused requests').toEqual([]);
    expect(probesSeen(holdProbes)).toHaveLength(2);
  });

  it("the wait never outlasts the request's own timeout: 503 queue_timeout at the deployment timeout, not the wait limit", async () => {
    const normal = await stack.createKey({ name: 'brief-normal' });
    const low = await stack.createKey({ name: 'brief-low', priority: 'low' });
    const high = await stack.createKey({ name: 'brief-high', priority: 'high' });
    const req = (key: string, prompt: string, ttft: number, probe: string) =>
      timedCompletion(stack.baseUrl, key, { model: 'brief', prompt, fake_ttft_ms: ttft, probe });
    // The one slot: busy 0-0.6 s (first), then from 0.6 s until its own timeout at ~1.7 s
    // (second: a `high` request that arrives later but goes first, and whose upstream never
    // answers in time). Two low requests wait meanwhile; each has 1.5 s to live, so the slot
    // is still busy when their own timeout comes, long before the 2.5 s wait limit.
    const probes = { first: randomUUID(), waiter1: randomUUID(), waiter2: randomUUID(), second: randomUUID() };
    const first = req(normal, 'first', 600, probes.first);
    await waitUntil('the first request to run', () => brief.inFlight() === 1, 5_000);
    const waiters = [req(low, 'waiter one', 0, probes.waiter1), req(low, 'waiter two', 0, probes.waiter2)];
    await sleep(200);
    const second = req(high, 'second', 10_000, probes.second);
    const [firstRes, secondRes, ...waited] = await Promise.all([first, second, ...waiters]);

    expect(firstRes.status, firstRes.text).toBe(200);
    expectOpenAIError(secondRes, 504, { code: 'timeout' });
    for (const res of waited) {
      expectOpenAIError(res, 503, { type: 'server_error', code: 'queue_timeout' });
      expect(Number(res.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
      expect(res.ms, 'refused at its own timeout').toBeGreaterThanOrEqual(BRIEF_TIMEOUT_MS - 100);
      expect(res.ms, 'refused at its own timeout, well before the wait limit').toBeLessThan(MAX_WAIT_MS - 300);
      expect(res.queueMs).toBeGreaterThanOrEqual(BRIEF_TIMEOUT_MS - 200);
    }
    await sleep(300);
    const seen = new Set(brief.requests.map((r) => r.body.probe as string));
    expect(seen.has(probes.waiter1) || seen.has(probes.waiter2), 'the upstream saw a refused request').toBe(false);
    expect(brief.maxInFlight()).toBe(1);
  });
});
