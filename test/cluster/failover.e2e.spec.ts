import { modelQueueName, redisNames, UsageStore } from '../../libs/common/src';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { RedisCluster } from '../support/redis-cluster';
import { simulatorDeployment, writeModelList } from '../support/router-config';
import { Stack } from '../support/stack';

/** How long a node may be silent before its replica takes over (cluster-node-timeout). */
const NODE_TIMEOUT_MS = 1_000;
/** A request that has not ended by then hangs: far past any timeout of the path. */
const HANG_MS = 25_000;

type Outcome =
  { kind: 'ok'; rid: string } | { kind: 'error'; status: number } | { kind: 'cut' | 'hang'; detail: string };

/**
 * One streamed completion, judged by what the client got: the whole text and [DONE] (ok), a
 * clean OpenAI error (a status, or an in-band error event), a cut connection, or nothing
 * within HANG_MS.
 */
async function streamOnce(base: string, key: string, prompt: string): Promise<Outcome> {
  try {
    const res = await fetch(`${base}/v1/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'sim', prompt, max_tokens: 16, stream: true }),
      signal: AbortSignal.timeout(HANG_MS),
    });
    const text = await res.text();
    if (res.status !== 200) {
      const body = JSON.parse(text) as { error?: { message?: string } };
      return body.error?.message === undefined ? { kind: 'cut', detail: text } : { kind: 'error', status: res.status };
    }
    if (text.includes('"error":')) {
      return { kind: 'error', status: 200 };
    }
    const id = /"id":"cmpl-([0-9a-f]+)"/.exec(text)?.[1];
    if (!text.includes('data: [DONE]') || id === undefined || !text.includes(prompt.split(' ')[0] ?? '')) {
      return { kind: 'cut', detail: text.slice(-200) };
    }
    return { kind: 'ok', rid: id };
  } catch (err) {
    const name = (err as Error).name;
    return { kind: name === 'TimeoutError' ? 'hang' : 'cut', detail: String(err) };
  }
}

/** Three masters with one replica each; the master of the model's queue is killed mid-load. */
describe('on a Redis Cluster, when a master dies', () => {
  let cluster: RedisCluster;
  let stack: Stack;
  let key: string;
  let tokenId: string;

  beforeAll(async () => {
    cluster = await RedisCluster.start({ masters: 3, replicas: 1, nodeTimeoutMs: NODE_TIMEOUT_MS });
    stack = await cluster.stack('failover', {
      // An echo: the text names its request, so a mixed-up or truncated answer shows.
      routerConfig: writeModelList(simulatorDeployment('sim', 'echo', { itl_ms: 15 })),
    });
    ({
      key,
      token: { id: tokenId },
    } = await stack.tokens.create({ name: 'failover' }));
  }, 60_000);

  afterAll(async () => {
    // Its test client may still hold the killed node: the keys it cannot delete die with the cluster.
    await stack?.stop().catch(() => undefined);
    await cluster?.stop();
  });

  it('answers again within the failover time; in-flight requests complete or end cleanly; completed ones keep their record', async () => {
    const names = redisNames(stack.prefix, true);
    const victim = await cluster.masterOf(`${names.bullPrefix}:${modelQueueName('sim')}:meta`);
    const outcomes: { at: number; outcome: Outcome }[] = [];
    let stop = false;
    let n = 0;
    // 12 clients streaming back to back, before, during and after the failover.
    const clients = Array.from({ length: 12 }, async () => {
      while (!stop) {
        const at = Date.now();
        const outcome = await streamOnce(stack.baseUrl, key, `r${n++} one two three four five six seven`);
        outcomes.push({ at, outcome });
        if (outcome.kind !== 'ok') {
          await new Promise((r) => setTimeout(r, 100)); // a client backs off after an error
        }
      }
    });
    await new Promise((r) => setTimeout(r, 1_500));
    // The records made so far waited for their shard's replica (UsageStore.accountDurably).
    const usageMaster = await cluster.masterOf(names.tokenUsage(tokenId).log);
    expect(await cluster.commandCalls(usageMaster, 'wait')).toBeGreaterThan(0);
    const killedAt = Date.now();
    await cluster.kill(victim);
    // Serving again: a request started after the kill completes.
    let recoveredAt = 0;
    while (recoveredAt === 0 && Date.now() - killedAt < 30_000) {
      await new Promise((r) => setTimeout(r, 200));
      recoveredAt = outcomes.find((o) => o.at > killedAt && o.outcome.kind === 'ok')?.at ?? 0;
    }
    await new Promise((r) => setTimeout(r, 1_500));
    stop = true;
    await Promise.all(clients);

    expect(recoveredAt, 'no request completed after the master was killed').toBeGreaterThan(0);
    // The cluster promotes the replica within about two node timeouts; the rest is reconnects.
    expect(recoveredAt - killedAt).toBeLessThan(15_000);
    const bad = outcomes.filter((o) => o.outcome.kind === 'cut' || o.outcome.kind === 'hang');
    expect(
      bad.map((o) => o.outcome),
      'requests that hung or were cut',
    ).toEqual([]);
    const ok = outcomes.filter((o) => o.outcome.kind === 'ok');
    expect(ok.filter((o) => o.at > recoveredAt).length).toBeGreaterThan(0);

    // Every completed request has its usage record, already when its client had the answer:
    // on a cluster a worker sends a job's last message only once the record is written and
    // its shard's replica has it (UsageStore.accountDurably), so the kill cannot take it along.
    const store = new UsageStore(stack.redis, names, 3_600_000);
    const rids = new Set((await store.query({ since: 0 })).map((r) => r.rid));
    const missing = ok.map((o) => (o.outcome.kind === 'ok' ? o.outcome.rid : '')).filter((rid) => !rids.has(rid));
    // What the processes said of a missing record, for the failure message.
    const said = [stack.gateway, ...stack.workers]
      .flatMap((p) => p.output().split('\n'))
      .filter((line) => missing.some((rid) => line.includes(rid)));
    expect(
      missing,
      `${missing.length} of ${ok.length} completed requests have no usage record; logs:\n${said.join('\n')}`,
    ).toEqual([]);
  }, 90_000);
});
