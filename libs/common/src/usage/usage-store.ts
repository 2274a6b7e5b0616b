import type Redis from 'ioredis';
import type { RedisNames } from '../names';
import type { RefusalCount, UsageRecord, UsageSummary, UsageTotals } from './usage-record';

const MAX_SCAN = 1_000_000;

const empty = (): UsageTotals => ({ requests: 0, prompt_tokens: 0, completion_tokens: 0, errors: 0 });

function add(t: UsageTotals, r: UsageRecord): void {
  t.requests += 1;
  t.prompt_tokens += r.prompt_tokens;
  t.completion_tokens += r.completion_tokens;
  t.errors += r.status >= 400 ? 1 : 0;
}

/**
 * One request's accounting in one script call (a MULTI of ~16 commands cost the worker
 * noticeably more CPU): first the trim of records past retention, then the record into
 * the log stream, the all-time counters of its
 * token and model, and, when asked, its tokens into the token's rate-limit window.
 * KEYS: log, token counters, model counters, limiter ('' = none), usage claim ('' = none).
 * ARGV: minid, record JSON, prompt tokens, completion tokens, error (0/1), second, claim
 * owner, claim TTL ms. Returns 0, writing nothing, when the claim was already taken.
 */
// XTRIM comes first, before the claim's SET too: SET and XADD are refused when Redis is
// at maxmemory, XTRIM is not, so old records are still trimmed (and memory freed) when
// Redis is nearly full; once it trimmed, the script may write the rest.
const ACCOUNT_LUA = `
redis.call('XTRIM', KEYS[1], 'MINID', '~', ARGV[1])
if KEYS[5] ~= '' and not redis.call('SET', KEYS[5], ARGV[7], 'PX', ARGV[8], 'NX') then
  return 0
end
redis.call('XADD', KEYS[1], '*', 'd', ARGV[2])
for k = 2, 3 do
  redis.call('HINCRBY', KEYS[k], 'requests', 1)
  redis.call('HINCRBY', KEYS[k], 'prompt_tokens', ARGV[3])
  redis.call('HINCRBY', KEYS[k], 'completion_tokens', ARGV[4])
  redis.call('HINCRBY', KEYS[k], 'errors', ARGV[5])
end
if KEYS[4] ~= '' then
  redis.call('HINCRBY', KEYS[4], 'i:' .. ARGV[6], ARGV[3])
  redis.call('HINCRBY', KEYS[4], 'o:' .. ARGV[6], ARGV[4])
  redis.call('PEXPIRE', KEYS[4], 61000)
end
return 1
`;

/** Who takes a request's usage claim ({@link RedisNames.usageClaim}), and for how long it is kept. */
export interface UsageClaim {
  owner: string;
  ttlMs: number;
}

type AccountCommand = (...args: (string | number)[]) => Promise<number>;

/**
 * Usage records in a Redis Stream (ordered by time, trimmed by age with MINID) plus
 * all-time counters per token and per model.
 */
export class UsageStore {
  private readonly account: AccountCommand;

  constructor(
    private readonly redis: Redis,
    private readonly names: RedisNames,
    private readonly retentionMs: number,
  ) {
    redis.defineCommand('aqueductAccount', { numberOfKeys: 5, lua: ACCOUNT_LUA });
    this.account = (redis as unknown as { aqueductAccount: AccountCommand }).aqueductAccount.bind(redis);
  }

  /**
   * Writes the record and counters; with `countTowardsLimits` its tokens also count in
   * the token's sliding rate-limit window (see RateLimiter). With a `claim`, only when the
   * claim key is still free (it is taken in the same script): false when another writer
   * already recorded the request.
   */
  async record(r: UsageRecord, now: number, countTowardsLimits = false, claim?: UsageClaim): Promise<boolean> {
    const written = await this.account(
      this.names.usageLog,
      this.names.usageByToken(r.token_id),
      this.names.usageByModel(r.model),
      countTowardsLimits ? this.names.limiter(r.token_id) : '',
      claim === undefined ? '' : this.names.usageClaim(r.rid),
      String(now - this.retentionMs),
      JSON.stringify(r),
      r.prompt_tokens,
      r.completion_tokens,
      r.status >= 400 ? 1 : 0,
      Math.floor(now / 1000),
      claim?.owner ?? '',
      Math.max(1, Math.round(claim?.ttlMs ?? 1)),
    );
    return written === 1;
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
      refused: await this.refusals(filter),
    };
  }

  /** The all-time refusal counters (see RefusalCounter), optionally filtered. */
  async refusals(filter: { tokenId?: string; model?: string } = {}): Promise<RefusalCount[]> {
    const all = await this.redis.hgetall(this.names.refusals);
    const out: RefusalCount[] = [];
    for (const [field, n] of Object.entries(all)) {
      // Model names may contain '|'; token ids and statuses never do.
      const first = field.indexOf('|');
      const last = field.lastIndexOf('|');
      const tokenId = field.slice(0, first);
      const model = field.slice(first + 1, last);
      const status = field.slice(last + 1);
      const r: RefusalCount = {
        token_id: tokenId === '-' ? null : tokenId,
        model: model === '' ? null : model,
        status: Number(status),
        count: Number(n),
      };
      if (
        (filter.tokenId === undefined || r.token_id === filter.tokenId) &&
        (filter.model === undefined || r.model === filter.model)
      ) {
        out.push(r);
      }
    }
    return out.sort((a, b) => b.count - a.count);
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
