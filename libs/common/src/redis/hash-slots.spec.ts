import { QueueKeys } from 'bullmq';
import { describe, expect, it } from 'vitest';
import { hashSlot, slotsOf } from '../../../../test/support/hash-slot';
import { admissionKeys } from '../limits/token-admission';
import { modelQueueName, redisNames } from '../names';
import { accountCalls, type UsageWrite } from '../usage/usage-store';
import type { UsageRecord } from '../usage/usage-record';

/**
 * On a Redis Cluster a script, MULTI or pipeline may only touch keys of one hash slot
 * (CROSSSLOT otherwise), and the load spreads only if different tokens and models use
 * different slots. These tests check the key layout of every multi-key call; the cluster
 * suite (test/cluster) runs the same calls against a real cluster.
 */
const names = redisNames('aqueduct', true);
const MODELS = ['sim', 'qwen-7b', 'openai/gpt-4o', 'a{b}c:d', 'held'];
const TOKENS = ['tok_0123456789abcdef', 'tok_fedcba9876543210', 'tok_00000000000000aa', 'tok_1'];

describe('hash slots of the cluster key layout', () => {
  it("BullMQ: every key of a model's queue, its jobs and locks and its fair-share state share one slot", () => {
    const keys = new QueueKeys(names.bullPrefix);
    for (const model of MODELS) {
      const queue = modelQueueName(model);
      const all = [
        ...Object.values(keys.getKeys(queue)),
        keys.toKey(queue, 'rid-1.0'),
        keys.toKey(queue, 'rid-1.0:logs'),
        names.jobLock(model, 'rid-1.0'),
        names.fairShare(model),
      ];
      expect(all.length).toBeGreaterThan(20);
      expect(slotsOf(all).size, model).toBe(1);
    }
  });

  it("different models' queues land on different slots", () => {
    const slots = MODELS.map((m) => hashSlot(new QueueKeys(names.bullPrefix).toKey(modelQueueName(m), 'wait')));
    expect(new Set(slots).size).toBe(MODELS.length);
  });

  it('admission (ADMISSION_LUA): the keys of one call share the token slot, with and without a model', () => {
    for (const token of TOKENS) {
      const slot = hashSlot(names.limiter(token));
      for (const model of [...MODELS, null]) {
        expect(slotsOf(admissionKeys(names, token, model))).toEqual(new Set([slot]));
      }
    }
    expect(slotsOf(TOKENS.map((t) => names.limiter(t))).size).toBe(TOKENS.length);
  });

  it("a token's lease release (MULTI) and renewal pipeline stay in its slot", () => {
    for (const token of TOKENS) {
      expect(slotsOf([names.tokenLeases(token), ...MODELS.map((m) => names.tokenModelLeases(token, m))]).size).toBe(1);
    }
  });

  it('token creation (MULTI on both token hashes) stays in one slot', () => {
    expect(slotsOf([names.tokensByHash, names.tokensById]).size).toBe(1);
  });

  const record = (rid: string, token: string, model: string): UsageRecord => ({
    rid,
    token_id: token,
    model,
    deployment: null,
    route: '/v1/chat/completions',
    status: 200,
    outcome: 'ok',
    started_at: 0,
    latency_ms: 1,
    queue_ms: 0,
    ttft_ms: null,
    prompt_tokens: 1,
    completion_tokens: 2,
    usage_estimated: false,
    user: null,
    user_id: null,
    ip: null,
    user_agent: null,
  });

  it('usage accounting (ACCOUNT_LUA): one call per token, each in that token slot with its limiter and claims', () => {
    const writes: UsageWrite[] = [];
    for (let i = 0; i < 12; i++) {
      writes.push({
        record: record(`r${i}`, TOKENS[i % TOKENS.length]!, MODELS[i % MODELS.length]!),
        countTowardsLimits: i % 2 === 0,
        ...(i % 3 !== 0 && { claim: { owner: 'wk-1', ttlMs: 60_000 } }),
      });
    }
    const calls = accountCalls(names, writes, Date.now(), 3_600_000);
    expect(calls).toHaveLength(TOKENS.length);
    for (const call of calls) {
      expect(call.keys).toHaveLength(5 * call.writes.length);
      expect(call.keys).not.toContain(''); // a placeholder would hash to slot 0
      const token = writes[call.writes[0]!]!.record.token_id;
      expect(slotsOf(call.keys)).toEqual(new Set([hashSlot(names.limiter(token))]));
      expect(call.writes.every((i) => writes[i]!.record.token_id === token)).toBe(true);
    }
    // Every record is in exactly one call, and a token's records keep their order.
    expect(calls.flatMap((c) => c.writes).sort((a, b) => a - b)).toEqual(writes.map((_, i) => i));
    for (const call of calls) {
      expect([...call.writes].sort((a, b) => a - b)).toEqual(call.writes);
    }
  });

  it('one Redis keeps one accounting call for a whole batch, on its original keys', () => {
    const standalone = redisNames('aqueduct');
    const writes = TOKENS.map((t, i) => ({ record: record(`r${i}`, t, 'sim'), countTowardsLimits: true }));
    const calls = accountCalls(standalone, writes, Date.now(), 3_600_000);
    expect(calls).toHaveLength(1);
    expect(calls[0]?.keys.slice(0, 3)).toEqual([
      'aqueduct:usage:log',
      `aqueduct:usage:token:${TOKENS[0]}`,
      'aqueduct:usage:model:sim',
    ]);
    expect(standalone.tokensByHash).toBe('aqueduct:tokens:by-hash');
  });
});
