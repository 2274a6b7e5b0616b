import type Redis from 'ioredis';
import type { ChainableCommander } from 'ioredis';
import type { RedisNames } from '../names';
import type { UsageRecord, UsageSummary, UsageTotals } from './usage-record';

const MAX_SCAN = 1_000_000;

const empty = (): UsageTotals => ({ requests: 0, prompt_tokens: 0, completion_tokens: 0, errors: 0 });

function add(t: UsageTotals, r: UsageRecord): void {
  t.requests += 1;
  t.prompt_tokens += r.prompt_tokens;
  t.completion_tokens += r.completion_tokens;
  t.errors += r.status >= 400 ? 1 : 0;
}

/**
 * Usage records in a Redis Stream (ordered by time, trimmed by age with MINID) plus
 * all-time counters per token and per model. A record costs one MULTI, which the
 * worker shares with the rate-limit usage update.
 */
export class UsageStore {
  constructor(
    private readonly redis: Redis,
    private readonly names: RedisNames,
    private readonly retentionMs: number,
  ) {}

  /** Queues the record's writes on `multi` (the caller executes it). */
  append(multi: ChainableCommander, r: UsageRecord, now: number): void {
    const error = r.status >= 400 ? 1 : 0;
    multi.xadd(this.names.usageLog, 'MINID', '~', String(now - this.retentionMs), '*', 'd', JSON.stringify(r));
    for (const key of [this.names.usageByToken(r.token_id), this.names.usageByModel(r.model)]) {
      multi
        .hincrby(key, 'requests', 1)
        .hincrby(key, 'prompt_tokens', r.prompt_tokens)
        .hincrby(key, 'completion_tokens', r.completion_tokens)
        .hincrby(key, 'errors', error);
    }
  }

  async record(r: UsageRecord, now: number): Promise<void> {
    const multi = this.redis.multi();
    this.append(multi, r, now);
    await multi.exec();
  }

  /** Records since `since` (epoch ms), oldest first, optionally filtered. */
  async query(filter: { since: number; tokenId?: string; model?: string }): Promise<UsageRecord[]> {
    const out: UsageRecord[] = [];
    let start = String(filter.since);
    for (let scanned = 0; scanned < MAX_SCAN;) {
      const batch = await this.redis.xrange(this.names.usageLog, start, '+', 'COUNT', 5_000);
      for (const [, fields] of batch) {
        const r = JSON.parse(fields[1] ?? '{}') as UsageRecord;
        if (
          (filter.tokenId === undefined || r.token_id === filter.tokenId) &&
          (filter.model === undefined || r.model === filter.model)
        ) {
          out.push(r);
        }
      }
      scanned += batch.length;
      const last = batch.at(-1);
      if (last === undefined || batch.length < 5_000) {
        break;
      }
      start = `(${last[0]}`;
    }
    return out;
  }

  async summarize(filter: { since: number; tokenId?: string; model?: string }): Promise<UsageSummary> {
    const records = await this.query(filter);
    const total = empty();
    const byModel = new Map<string, UsageTotals>();
    const byToken = new Map<string, UsageTotals>();
    for (const r of records) {
      add(total, r);
      add(byModel.get(r.model) ?? byModel.set(r.model, empty()).get(r.model)!, r);
      add(byToken.get(r.token_id) ?? byToken.set(r.token_id, empty()).get(r.token_id)!, r);
    }
    return {
      since: filter.since,
      ...total,
      by_model: [...byModel].map(([model, t]) => ({ model, ...t })),
      by_token: [...byToken].map(([token_id, t]) => ({ token_id, ...t })),
    };
  }

  /** All-time counters of one token or model. */
  async totals(kind: 'token' | 'model', id: string): Promise<UsageTotals> {
    const key = kind === 'token' ? this.names.usageByToken(id) : this.names.usageByModel(id);
    const h = await this.redis.hgetall(key);
    return {
      requests: Number(h.requests ?? 0),
      prompt_tokens: Number(h.prompt_tokens ?? 0),
      completion_tokens: Number(h.completion_tokens ?? 0),
      errors: Number(h.errors ?? 0),
    };
  }
}
