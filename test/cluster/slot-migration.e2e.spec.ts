import type { Cluster } from 'ioredis';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hashSlot } from '../support/hash-slot';
import { RedisCluster } from '../support/redis-cluster';
import { simulatorDeployment, writeModelList } from '../support/router-config';
import { Stack } from '../support/stack';
import { waitUntil } from '../support/wait';

/**
 * Issue 14, item 3: a gateway's inbox is a sharded channel in its own slot. When that slot
 * moves to another master (a reshard), the old owner unsubscribes the gateway: the gateway
 * must subscribe again on the new owner, streams in flight end complete or with a clean
 * error (never a silent truncation, never a hang), and later requests are relayed as before.
 */
describe('on a Redis Cluster, when the slot of a gateway inbox migrates', () => {
  let cluster: RedisCluster;
  let stack: Stack;
  let client: OpenAI;

  beforeAll(async () => {
    cluster = await RedisCluster.start({ masters: 3 });
    stack = await cluster.stack('cluster-reshard', {
      // A stream whose messages fell between the old owner's unsubscribe and the new
      // subscription ends with an error once it has been silent this long (15 s by default).
      env: { AQUEDUCT_IDLE_TIMEOUT_MS: '5000' },
      routerConfig: writeModelList(
        simulatorDeployment('echo', 'echo'),
        simulatorDeployment('slow', 'echo', { itl_ms: 60 }),
      ),
    });
    client = new OpenAI({ apiKey: await stack.createKey(), baseURL: `${stack.baseUrl}/v1`, maxRetries: 0 });
  });

  afterAll(async () => {
    await stack?.stop();
    await cluster?.stop();
  });

  /** The inbox channels of this stack's gateways, as the masters list them. */
  const inboxes = async (): Promise<string[]> => {
    const masters = (stack.redis as Cluster).nodes('master');
    const lists = await Promise.all(
      masters.map((n) => n.call('PUBSUB', 'SHARDCHANNELS', `${stack.prefix}:relay:*`) as Promise<string[]>),
    );
    return lists.flat();
  };

  const subscribersOn = async (port: number, channel: string): Promise<number> => {
    const node = (stack.redis as Cluster).nodes('master').find((n) => n.options.port === port);
    const reply = (await node?.call('PUBSUB', 'SHARDNUMSUB', channel)) as [string, number] | undefined;
    return Number(reply?.[1] ?? 0);
  };

  /** One stream read to its end: its text, or the error that ended it. */
  const stream = async (model: string, prompt: string): Promise<{ text: string; error?: string }> => {
    let text = '';
    try {
      const chunks = await client.completions.create({ model, prompt, max_tokens: 64, stream: true });
      for await (const chunk of chunks) {
        text += chunk.choices.map((c) => c.text).join('');
      }
      return { text };
    } catch (err) {
      return { text, error: (err as Error).message };
    }
  };

  it('subscribes again on the new owner; streams in flight end whole or with an error; later ones are relayed', async () => {
    expect(
      (await client.completions.create({ model: 'echo', prompt: 'before the move' })).choices[0]?.text.trim(),
    ).toBe('before the move');
    const [inbox, ...others] = await inboxes();
    expect(inbox, 'the gateway has a sharded inbox').toBeDefined();
    expect(others).toEqual([]);
    const slot = hashSlot(inbox!);
    const from = await cluster.ownerOf(slot);
    const to = (await cluster.masterPorts()).find((p) => p !== from)!;
    expect(await subscribersOn(from, inbox!)).toBe(1);

    // Streams of ~1.2 s each, the move in the middle of them.
    const prompts = Array.from({ length: 6 }, (_, i) => `in flight ${i} ${'word '.repeat(18)}`.trim());
    const inFlight = Promise.all(prompts.map((p) => stream('slow', p)));
    await new Promise((r) => setTimeout(r, 400));
    await cluster.migrateSlot(slot, to);
    expect(await cluster.ownerOf(slot)).toBe(to);

    const ended = await inFlight;
    ended.forEach((r, i) => {
      if (r.error === undefined) {
        expect(r.text.trim(), 'a stream that ended without an error is whole').toBe(prompts[i]);
      } else {
        expect(r.error).not.toBe('');
      }
    });

    // The gateway listens on the new owner, and only there.
    await waitUntil(
      'the gateway to subscribe on the new owner',
      async () => (await subscribersOn(to, inbox!)) === 1,
      10_000,
      100,
    );
    expect(await inboxes()).toEqual([inbox]);

    const after = Array.from({ length: 12 }, (_, i) => `after the move ${i}`);
    const results = await Promise.all(
      after.map((p, i) =>
        i % 2 === 0
          ? stream('echo', p)
          : client.completions.create({ model: 'echo', prompt: p }).then((r) => ({ text: r.choices[0]?.text ?? '' })),
      ),
    );
    expect(results.map((r) => r.text.trim())).toEqual(after);
  });
});
