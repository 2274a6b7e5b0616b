import type { RedisClient } from '../redis/redis-factory';
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
 * The accounting of one or more requests in one script call (a MULTI of ~16 commands per
 * record cost the worker noticeably more CPU; one call per record cost Redis a script
 * run each): first the trim of records past retention, then per record its claim, the
 * record into the log stream, the all-time counters of its token and model, and, when
 * asked, its tokens into the token's rate-limit window.
 * KEYS, 5 per record: log, token counters, model counters, limiter ('' = none), usage
 * claim ('' = none). ARGV: minid, then 7 per record: record JSON, prompt tokens,
 * completion tokens, error (0/1), second, claim owner, claim TTL ms.
 * Returns one 0/1 per record: 0, nothing written, when its claim was already taken.
 */
// XTRIM comes first, before the claim's SET too: SET and XADD are refused when Redis is
// at maxmemory, XTRIM is not, so old records are still trimmed (and memory freed) when
// Redis is nearly full; once it trimmed, the script may write the rest.
const ACCOUNT_LUA = `
redis.call('XTRIM', KEYS[1], 'MINID', '~', ARGV[1])
local written = {}
for j = 0, #KEYS / 5 - 1 do
  local k = j * 5
  local a = 1 + j * 7
  if KEYS[k + 5] ~= '' and not redis.call('SET', KEYS[k + 5], ARGV[a + 6], 'PX', ARGV[a + 7], 'NX') then
    written[j + 1] = 0
  else
    redis.call('XADD', KEYS[k + 1], '*', 'd', ARGV[a + 1])
    for c = k + 2, k + 3 do
      redis.call('HINCRBY', KEYS[c], 'requests', 1)
      redis.call('HINCRBY', KEYS[c], 'prompt_tokens', ARGV[a + 2])
      redis.call('HINCRBY', KEYS[c], 'completion_tokens', ARGV[a + 3])
      redis.call('HINCRBY', KEYS[c], 'errors', ARGV[a + 4])
    end
    if KEYS[k + 4] ~= '' then
      redis.call('HINCRBY', KEYS[k + 4], 'i:' .. ARGV[a + 5], ARGV[a + 2])
      redis.call('HINCRBY', KEYS[k + 4], 'o:' .. ARGV[a + 5], ARGV[a + 3])
      redis.call('PEXPIRE', KEYS[k + 4], 61000)
    end
    written[j + 1] = 1
  end
end
return written
`;

/** Who takes a request's usage claim ({@link RedisNames.usageClaim}), and for how long it is kept. */
export interface UsageClaim {
  owner: string;
  ttlMs: number;
}

type AccountCommand = (numKeys: number, ...args: (string | number)[]) => Promise<number[]>;

/** One record to write, as {@link UsageStore.recordMany} takes them. */
export interface UsageWrite {
  record: UsageRecord;
  /** Its tokens also count in the token's sliding rate-limit window (see RateLimiter). */
  countTowardsLimits: boolean;
  /** Written only when this claim key is still free (taken in the same script). */
  claim?: UsageClaim;
}

/**
 * Usage records in a Redis Stream (ordered by time, trimmed by age with MINID) plus
 * all-time counters per token and per model.
 */
export class UsageStore {
  private readonly account: AccountCommand;

  constructor(
    private readonly redis: RedisClient,
    private readonly names: RedisNames,
    private readonly retentionMs: number,
  ) {
    // numberOfKeys left out: a call names its own (5 per record).
    redis.defineCommand('aqueductAccount', { lua: ACCOUNT_LUA });
    this.account = (redis as unknown as { aqueductAccount: AccountCommand }).aqueductAccount.bind(redis);
  }

  /**
   * Writes the record and counters; with `countTowardsLimits` its tokens also count in
   * the token's sliding rate-limit window (see RateLimiter). With a `claim`, only when the
   * claim key is still free (it is taken in the same script): false when another writer
   * already recorded the request.
   */
  async record(r: UsageRecord, now: number, countTowardsLimits = false, claim?: UsageClaim): Promise<boolean> {
    const [written] = await this.recordMany([{ record: r, countTowardsLimits, claim }], now);
    return written === true;
  }

  /** Several records in one script call (see ACCOUNT_LUA); one `written` flag per record, in order. */
  async recordMany(writes: readonly UsageWrite[], now: number): Promise<boolean[]> {
    const keys: string[] = [];
    const args: (string | number)[] = [String(now - this.retentionMs)];
    for (const { record: r, countTowardsLimits, claim } of writes) {
      keys.push(
        this.names.usageLog,
        this.names.usageByToken(r.token_id),
        this.names.usageByModel(r.model),
        countTowardsLimits ? this.names.limiter(r.token_id) : '',
        claim === undefined ? '' : this.names.usageClaim(r.rid),
      );
      args.push(
        JSON.stringify(r),
        r.prompt_tokens,
        r.completion_tokens,
        r.status >= 400 ? 1 : 0,
        Math.floor(now / 1000),
        claim?.owner ?? '',
        Math.max(1, Math.round(claim?.ttlMs ?? 1)),
      );
    }
    const written = await this.account(keys.length, ...keys, ...args);
    return written.map((w) => w === 1);
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
