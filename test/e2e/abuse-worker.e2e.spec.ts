import { createHash, randomUUID } from 'node:crypto';
import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import Redis from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { demux, fakeUpstreamText, parseSse, raw, streamedText } from '../support/contract-helpers';
import { fakeBulkText, type FakeUpstream, startFakeUpstream } from '../support/fake-upstream';
import { openStream, sseOf } from '../support/http';
import { alive, readyWorkers, socketOwner, waitForWorkers } from '../support/processes';
import { simulatorDeployment, upstreamDeployment, writeModelList } from '../support/router-config';
import { freePort, type ProcessHandle, REDIS_URL, Stack } from '../support/stack';
import { waitUntil } from '../support/wait';

/**
 * Issue 9, the worker's side: one token holder must not be able to hurt the others, and
 * the gateway must not mistake a busy, draining or briefly unheard worker for a dead one.
 * - a 40 MB non-stream result reaches its client while bystander streams finish intact;
 * - a huge simulator request does not stall the worker's event loop;
 * - only OpenAI parameters and a deployment's `extra_body_allowed` reach an upstream;
 * - a control-plane blip or a draining worker neither fails nor re-runs a healthy stream;
 * - max_parallel_requests holds for requests that outlive the slot lease, and the slot of
 *   a worker that died frees itself within a lease.
 */

const HEARTBEAT_MS = 300;
const IDLE_MS = 6_000;
/**
 * The slot lease, which is also the job lock's duration: a worker whose event loop is held
 * longer than about half of it looks lost. A 40 MB result holds it for about 0.5 s at most
 * (its JSON.parse; the other steps get turns of their own), twice that when another suite
 * shares the two cores: at 600 ms that was seen to re-run the request, and so was 1 500 ms
 * while the whole result was handled in one stretch of 1.7 s.
 */
const LEASE_MS = 1_500;

const words = (n: number, tag = 'w') => Array.from({ length: n }, (_, i) => `${tag}${i}`).join(' ');
const sha = (s: string) => createHash('sha256').update(s).digest('hex');

describe('abuse: the worker side of protective limits', () => {
  let upstream: FakeUpstream;
  /** Dedicated upstreams for the capped deployments, so their in-flight peaks are theirs alone. */
  let cappedOne: FakeUpstream;
  let cappedTwo: FakeUpstream;
  let stack: Stack;
  let key: string;
  let metricsPort: number;

  beforeAll(async () => {
    upstream = await startFakeUpstream();
    cappedOne = await startFakeUpstream();
    cappedTwo = await startFakeUpstream();
    metricsPort = await freePort();
    const routerConfig = writeModelList(
      upstreamDeployment('up', upstream.url),
      // Lets through one extension only (plus the probe mark).
      upstreamDeployment('strict', upstream.url, { extra_body_allowed: ['probe', 'allowed_ext'] }),
      upstreamDeployment('cap1', cappedOne.url, { max_parallel_requests: 1 }),
      upstreamDeployment('cap2', cappedTwo.url, { max_parallel_requests: 2 }),
      simulatorDeployment('sim-big', 'echo', {}, { max_output_tokens: 4096 }),
      simulatorDeployment('sim-small', 'echo', { itl_ms: 10 }),
    );
    stack = await Stack.start('abuse-worker', {
      routerConfig,
      workers: 1,
      env: {
        AQUEDUCT_HEARTBEAT_MS: String(HEARTBEAT_MS),
        AQUEDUCT_IDLE_TIMEOUT_MS: String(IDLE_MS),
        AQUEDUCT_COMMIT_TIMEOUT_MS: '30000',
      },
      workerEnv: {
        AQUEDUCT_SLOT_LEASE_MS: String(LEASE_MS),
        AQUEDUCT_SHUTDOWN_GRACE_MS: '20000',
        // Only the first worker gets it; later ones log that the port is taken and go on.
        WORKER_METRICS_PORT: String(metricsPort),
        WORKER_METRICS_HOST: '127.0.0.1',
      },
    });
    key = await stack.createKey();
  });

  afterAll(async () => {
    await stack?.stop();
    await Promise.all([upstream?.close(), cappedOne?.close(), cappedTwo?.close()]);
  });

  const live = () => stack.workers.filter(alive);
  const requestsOf = (u: FakeUpstream, probe: string) => u.requests.filter((r) => r.body.probe === probe);

  async function ensureWorkers(n: number): Promise<void> {
    while (live().length < n) {
      stack.addWorker();
    }
    await waitForWorkers(stack, live().length, 20_000);
  }

  async function holderOf(u: FakeUpstream, probe: string): Promise<ProcessHandle> {
    let owner: ProcessHandle | undefined;
    await waitUntil(`the worker holding ${probe}`, () => {
      const req = requestsOf(u, probe)[0];
      owner = req?.remotePort === undefined ? undefined : socketOwner(req.remotePort, u.port, live());
      return owner !== undefined;
    });
    return owner!;
  }

  async function eventLoopLagMax(): Promise<number> {
    const text = await (await fetch(`http://127.0.0.1:${metricsPort}/metrics`)).text();
    const line = text.split('\n').find((l) => l.startsWith('nodejs_eventloop_lag_max_seconds'));
    return Number(line?.split(' ').at(-1));
  }

  it('a huge simulator request (n=128, max_tokens 4096, no latency) does not stall the worker', async () => {
    expect(live()).toHaveLength(1); // the bystander must share the big request's worker
    const before = await eventLoopLagMax();
    const prompt = words(512);
    const big = raw(stack, { model: 'sim-big', prompt, n: 128, max_tokens: 4096, stream: true }, { key });
    await new Promise((r) => setTimeout(r, 300));
    const sentAt = Date.now();
    const bystander = openStream(stack.baseUrl, key, {
      model: 'sim-small',
      prompt: words(20, 'b'),
      max_tokens: 64,
      stream: true,
    });
    await bystander.finished;
    const ttft = bystander.events[0]!.at - sentAt;
    const res = await big;
    const after = await eventLoopLagMax();

    expect(sseOf(bystander).errors).toHaveLength(0);
    expect(streamedText(sseOf(bystander))).toBe(` ${words(20, 'b')}`);
    expect(ttft, 'the bystander was served while the big request ran').toBeLessThan(1_500);
    // Monotone since boot: a rise past the boot-time peak (and 300 ms) is a stall during this test.
    expect(after, `event-loop lag max before ${before}s`).toBeLessThanOrEqual(Math.max(before, 0.3));
    expect(res.status).toBe(200);
    const sse = parseSse(res.text);
    expect(sse.errors).toHaveLength(0);
    const merged = demux(sse.chunks);
    expect(merged.size).toBe(128);
    const expected = prompt
      .split(' ')
      .map((w) => ` ${w}`)
      .join('');
    for (const i of [0, 63, 127]) {
      expect(merged.get(i)?.text).toBe(expected);
      expect(merged.get(i)?.finishes).toBe(1);
    }
  }, 90_000);

  it('unknown body fields never reach the upstream; an extra_body_allowed one does', async () => {
    const probe = randomUUID();
    const res = await raw(
      stack,
      {
        model: 'strict',
        prompt: 'a b',
        max_tokens: 5,
        temperature: 0.2,
        some_vllm_private: { x: 1 },
        kv_transfer_params: { remote: 'attacker:1234' },
        allowed_ext: 'yes',
        probe,
      },
      { key },
    );
    expect(res.status, res.text).toBe(200);
    const seen = requestsOf(upstream, probe);
    expect(seen).toHaveLength(1);
    expect(seen[0]?.body).toEqual({
      model: 'fake-model',
      prompt: 'a b',
      max_tokens: 5,
      temperature: 0.2,
      allowed_ext: 'yes',
      probe,
      stream: false,
    });

    // A body access_token is no credential: refused (401) or served, it never travels on.
    const second = randomUUID();
    const withToken = await raw(
      stack,
      { model: 'strict', prompt: 'a', access_token: 'sk-should-never-travel', probe: second },
      { key },
    );
    expect([200, 401], withToken.text).toContain(withToken.status);
    await new Promise((r) => setTimeout(r, 200));
    expect(upstream.requests.some((r) => 'access_token' in r.body)).toBe(false);
    if (withToken.status === 200) {
      expect(requestsOf(upstream, second)).toHaveLength(1);
    }
  });

  it('a 40 MB non-stream result reaches its client intact while bystander streams complete', async () => {
    const size = 40 * 1024 * 1024;
    const probe = randomUUID();
    const bigReq = raw(stack, { model: 'up', prompt: 'big', n: 1, fake_text_bytes: size, probe }, { key });
    const prompts = Array.from({ length: 10 }, (_, i) => words(20, `s${i}-`));
    const bystanders = prompts.map((prompt) =>
      openStream(stack.baseUrl, key, { model: 'up', prompt, max_tokens: 64, stream: true, fake_itl_ms: 40 }),
    );
    const [res] = await Promise.all([bigReq, ...bystanders.map((b) => b.finished)]);

    expect(res.status, res.text.slice(0, 300)).toBe(200);
    const body = res.json as { choices: { index: number; text: string; finish_reason: string }[] };
    expect(body.choices).toHaveLength(1);
    const text = body.choices[0]!.text;
    expect(text.length).toBe(size);
    expect(sha(text)).toBe(sha(fakeBulkText(size, 0)));
    expect(body.choices[0]?.finish_reason).toBe('stop');
    expect(requestsOf(upstream, probe)).toHaveLength(1);
    bystanders.forEach((b, i) => {
      expect(b.status).toBe(200);
      const sse = sseOf(b);
      expect(sse.errors, `bystander ${i}`).toHaveLength(0);
      expect(streamedText(sse), `bystander ${i}`).toBe(fakeUpstreamText(prompts[i]!));
      expect(sse.data.at(-1)).toBe('[DONE]');
    });
  }, 90_000);

  it('a control-plane blip (no worker heartbeats reach the gateway) neither fails nor re-runs a healthy stream', async () => {
    await ensureWorkers(1);
    const probe = randomUUID();
    const prompt = words(8, 'c');
    // Gaps between chunks longer than a heartbeat: the relay is quiet while heartbeats are missing.
    const stream = openStream(stack.baseUrl, key, { model: 'up', prompt, stream: true, fake_itl_ms: 800, probe });
    await waitUntil('the first chunk', () => stream.events.length >= 1);
    // Cut the gateway's control-transport subscriber (the one heartbeats arrive on) again and
    // again for 3 s: the gateway hears no worker for > 3 heartbeats, and says so on /ready.
    let sawNoWorker = false;
    const killed = await cutControlSubscriber(stack.gateway, 3_000, async () => {
      sawNoWorker ||= (await readyWorkers(stack)) === 0;
    });
    expect(killed, 'connections cut').toBeGreaterThan(0);
    expect(sawNoWorker, 'the gateway lost sight of every worker').toBe(true);
    await stream.finished;

    const sse = sseOf(stream);
    expect(sse.errors).toHaveLength(0);
    expect(streamedText(sse)).toBe(fakeUpstreamText(prompt));
    expect(sse.data.at(-1)).toBe('[DONE]');
    await new Promise((r) => setTimeout(r, 500));
    expect(requestsOf(upstream, probe)).toHaveLength(1);
    // The control plane came back by itself.
    await waitForWorkers(stack, live().length, 15_000);
  }, 60_000);

  it('max_parallel_requests holds for requests longer than the lease; a dead worker frees its slot within a lease', async () => {
    await ensureWorkers(2);
    // Four requests on a cap of 2, each outliving the lease (and the key's 2 × lease expiry).
    const probes = Array.from({ length: 4 }, () => randomUUID());
    const results = await Promise.all(
      probes.map((probe) =>
        raw(stack, { model: 'cap2', prompt: 'x y', fake_ttft_ms: 2 * LEASE_MS + 500, probe }, { key }),
      ),
    );
    results.forEach((r) => expect(r.status, r.text).toBe(200));
    expect(cappedTwo.maxInFlight(), 'the cap held for the whole run').toBe(2);
    expect(probes.every((p) => requestsOf(cappedTwo, p).length === 1)).toBe(true);

    // A stream holds the single slot of cap1; its worker is SIGKILLed (no release).
    const first = randomUUID();
    const held = openStream(stack.baseUrl, key, {
      model: 'cap1',
      prompt: words(30),
      stream: true,
      fake_itl_ms: 200,
      probe: first,
    });
    await waitUntil('the first chunk', () => held.events.length >= 1);
    const holder = await holderOf(cappedOne, first);
    await holder.stop('SIGKILL');
    const killedAt = Date.now();
    const next = randomUUID();
    const waiting = raw(stack, { model: 'cap1', prompt: 'after', probe: next }, { key });
    await waitUntil('the next request to get the slot', () => requestsOf(cappedOne, next).length > 0, 10_000);
    expect(Date.now() - killedAt, 'freed within a lease (plus backoff)').toBeLessThan(LEASE_MS + 2_000);
    expect((await waiting).status).toBe(200);
    await held.finished;
  }, 60_000);

  it('a SIGTERMed worker finishes its long streams: no 502, no second upstream call', async () => {
    await ensureWorkers(2);
    const specs = [
      { prompt: words(8, 'x'), fake_itl_ms: 500 },
      { prompt: words(8, 'y'), fake_itl_ms: 500 },
      // Still before its first token when the worker is told to stop.
      { prompt: words(6, 'z'), fake_ttft_ms: 1_500, fake_itl_ms: 400 },
      { prompt: words(6, 'v'), fake_ttft_ms: 1_500, fake_itl_ms: 400 },
    ].map((s) => ({ ...s, probe: randomUUID() }));
    const streams = specs.map((s) => openStream(stack.baseUrl, key, { model: 'up', stream: true, ...s }));
    const holders = new Set(await Promise.all(specs.map((s) => holderOf(upstream, s.probe))));
    const stopped = [...holders].map((w) => w.stop('SIGTERM'));
    await Promise.all(streams.map((s) => s.finished));
    await Promise.all(stopped);

    streams.forEach((s, i) => {
      expect(s.status, `stream ${i}`).toBe(200);
      const sse = sseOf(s);
      expect(sse.errors, `stream ${i}`).toHaveLength(0);
      expect(streamedText(sse), `stream ${i}`).toBe(fakeUpstreamText(specs[i]!.prompt));
      expect(sse.data.at(-1)).toBe('[DONE]');
    });
    [...holders].forEach((w) => expect(w.child.signalCode).not.toBe('SIGKILL'));
    await new Promise((r) => setTimeout(r, 1_000));
    for (const s of specs) {
      expect(requestsOf(upstream, s.probe), 'exactly one upstream call').toHaveLength(1);
    }
  }, 60_000);
});

/**
 * Kills, for `forMs`, every pub/sub connection of `gateway` except its relay inbox — that
 * is the control transport's subscriber, on which worker heartbeats arrive — as a network
 * blip on that connection would, calling `meanwhile` between rounds. Found from outside:
 * the process's TCP sockets (/proc) matched against Redis's CLIENT LIST. Returns how many
 * connections were cut.
 */
async function cutControlSubscriber(
  gateway: ProcessHandle,
  forMs: number,
  meanwhile: () => Promise<void>,
): Promise<number> {
  const admin = new Redis(REDIS_URL);
  let killed = 0;
  try {
    const until = Date.now() + forMs;
    while (Date.now() < until) {
      const ports = localPortsToRedis(gateway.child.pid!, Number(new URL(REDIS_URL).port || 6379));
      const list = (await admin.client('LIST')) as string;
      for (const line of list.split('\n')) {
        const f = Object.fromEntries(line.split(' ').map((kv) => kv.split('=') as [string, string]));
        const port = Number(f.addr?.split(':').at(-1));
        const subscribed = Number(f.sub ?? 0) + Number(f.psub ?? 0) > 0;
        if (ports.has(port) && subscribed && !(f.name ?? '').endsWith(':inbox')) {
          await admin.client('KILL', 'ID', f.id!);
          killed += 1;
        }
      }
      await meanwhile();
      // Often enough that a reconnected subscriber (ioredis retries after 1 s) hears no beat.
      await new Promise((r) => setTimeout(r, 20));
    }
  } finally {
    admin.disconnect();
  }
  return killed;
}

/** Local ports of `pid`'s TCP connections to `redisPort` (Linux /proc). */
function localPortsToRedis(pid: number, redisPort: number): Set<number> {
  const inodes = new Set<string>();
  for (const fd of readdirSync(`/proc/${pid}/fd`)) {
    try {
      const m = /^socket:\[(\d+)\]$/.exec(readlinkSync(`/proc/${pid}/fd/${fd}`));
      if (m?.[1] !== undefined) {
        inodes.add(m[1]);
      }
    } catch {
      // the fd closed meanwhile
    }
  }
  const remote = `:${redisPort.toString(16).toUpperCase().padStart(4, '0')}`;
  const ports = new Set<number>();
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    for (const row of readFileSync(file, 'utf8').split('\n').slice(1)) {
      const f = row.trim().split(/\s+/);
      if (f[2]?.endsWith(remote) && f[9] !== undefined && inodes.has(f[9])) {
        ports.add(parseInt(f[1]!.split(':').at(-1)!, 16));
      }
    }
  }
  return ports;
}
