import { type ChainableCommander, Cluster } from 'ioredis';
import { ShardReplicas } from '../redis/hash-slot';
import type { RedisClient } from '../redis/redis-factory';
import type { RedisNames } from '../names';
import type { RefusalCount, UsageRecord, UsageSummary, UsageTotals } from './usage-record';

const MAX_SCAN = 1_000_000;
/** The longest a record waits for its shard's replica to have it (see UsageStore.accountDurably). */
const REPLICA_WAIT_MS = 100;

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
 * KEYS, 5 per record: log, token counters, model counters, limiter, usage claim. ARGV:
 * minid, then 7 per record: record JSON, prompt tokens, completion tokens, error (0/1),
 * second ('' = not counted in the limiter), claim owner ('' = no claim), claim TTL ms.
 * Keys not used are still named, with their real names: on a cluster every key of a call
 * must be in the call's slot (a placeholder such as '' hashes to slot 0).
 * Returns one 0/1 per record: 0, nothing written, when its claim was already taken.
 * All records of one call share one log (KEYS[1], the one trimmed): the deployment's with one
 * Redis, their token's on a cluster, where a call holds one token's records (accountCalls).
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
  if ARGV[a + 6] ~= '' and not redis.call('SET', KEYS[k + 5], ARGV[a + 6], 'PX', ARGV[a + 7], 'NX') then
    written[j + 1] = 0
  else
    redis.call('XADD', KEYS[k + 1], '*', 'd', ARGV[a + 1])
    for c = k + 2, k + 3 do
      redis.call('HINCRBY', KEYS[c], 'requests', 1)
      redis.call('HINCRBY', KEYS[c], 'prompt_tokens', ARGV[a + 2])
      redis.call('HINCRBY', KEYS[c], 'completion_tokens', ARGV[a + 3])
      redis.call('HINCRBY', KEYS[c], 'errors', ARGV[a + 4])
    end
    if ARGV[a + 5] ~= '' then
      redis.call('HINCRBY', KEYS[k + 4], 'i:' .. ARGV[a + 5], ARGV[a + 2])
      redis.call('HINCRBY', KEYS[k + 4], 'o:' .. ARGV[a + 5], ARGV[a + 3])
      redis.call('PEXPIRE', KEYS[k + 4], 61000)
    end
    written[j + 1] = 1
  end
end
return written
`;

/**
 * The name ACCOUNT_LUA is defined under. Its number of keys varies per call, so its first
 * argument is that number, which ioredis' cluster auto-pipelining takes for the first key: it
 * would group calls of different tokens into one pipeline for the wrong node (refused: "All
 * keys in the pipeline should belong to the same slots allocation group"). Cluster clients
 * leave it out of auto-pipelining (see clusterOptions).
 */
export const ACCOUNT_COMMAND = 'aqueductAccount';

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

/** The KEYS and ARGV of one ACCOUNT_LUA call. */
export interface AccountCall {
  keys: string[];
  args: (string | number)[];
  /** Indexes, into the writes given to {@link accountCalls}, of this call's records, in order. */
  writes: number[];
}

/**
 * The script calls that account `writes`. With one Redis, one call for all of them. On a
 * cluster a script may only touch keys of one slot, and a record's keys (log, counters,
 * claim, limiter) carry its token's hash tag (see {@link RedisNames.tokenUsage}): one call
 * per token, each trimming that token's log. The records of one token keep their order.
 */
export function accountCalls(
  names: RedisNames,
  writes: readonly UsageWrite[],
  now: number,
  retentionMs: number,
): AccountCall[] {
  const calls = new Map<string, AccountCall>();
  writes.forEach(({ record: r, countTowardsLimits, claim }, i) => {
    const group = names.cluster ? r.token_id : '';
    let call = calls.get(group);
    if (call === undefined) {
      call = { keys: [], args: [String(now - retentionMs)], writes: [] };
      calls.set(group, call);
    }
    const usage = names.tokenUsage(r.token_id);
    call.keys.push(usage.log, usage.totals, usage.model(r.model), names.limiter(r.token_id), usage.claim(r.rid));
    call.args.push(
      JSON.stringify(r),
      r.prompt_tokens,
      r.completion_tokens,
      r.status >= 400 ? 1 : 0,
      countTowardsLimits ? Math.floor(now / 1000) : '',
      claim?.owner ?? '',
      Math.max(1, Math.round(claim?.ttlMs ?? 1)),
    );
    call.writes.push(i);
  });
  return [...calls.values()];
}

/**
 * Usage records in a Redis Stream (ordered by time, trimmed by age with MINID) plus
 * all-time counters per token and per model. On a cluster the same per token, in the
 * token's slot (see {@link RedisNames.tokenUsage}): queries over all tokens then read the
 * logs of the tokens in {@link RedisNames.usageTokens}.
 */
export class UsageStore {
  private readonly account: AccountCommand;
  /** On a cluster: whether a record's shard has a replica to wait for (see accountDurably). */
  private readonly replicas?: ShardReplicas;
  /** Cluster layout: the tokens this process already put in {@link RedisNames.usageTokens}. */
  private readonly registered = new Set<string>();

  constructor(
    private readonly redis: RedisClient,
    private readonly names: RedisNames,
    private readonly retentionMs: number,
  ) {
    // numberOfKeys left out: a call names its own (5 per record).
    redis.defineCommand(ACCOUNT_COMMAND, { lua: ACCOUNT_LUA });
    this.replicas = redis instanceof Cluster ? new ShardReplicas(redis) : undefined;
    this.account = (redis as unknown as Record<typeof ACCOUNT_COMMAND, AccountCommand>)[ACCOUNT_COMMAND].bind(redis);
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

  /**
   * Several records in one script call (see ACCOUNT_LUA; on a cluster one per token, see
   * {@link accountCalls}); one `written` flag per record, in order.
   */
  async recordMany(writes: readonly UsageWrite[], now: number): Promise<boolean[]> {
    const calls = accountCalls(this.names, writes, now, this.retentionMs);
    if (this.names.cluster) {
      await this.register(writes);
    }
    const written: boolean[] = [];
    const replies = await Promise.all(calls.map((c) => this.accountDurably(c)));
    replies.forEach((reply, c) => reply.forEach((w, j) => (written[calls[c]!.writes[j]!] = w === 1)));
    return written;
  }

  /**
   * One accounting call. On a cluster whose shard has a replica, the call is followed on the
   * same connection by `WAIT 1`: Redis replicates asynchronously, and a master that dies just
   * after acknowledging a record would take it along (the failover test lost one record in
   * about one run in six under load). Once the replica has acknowledged it, the record is
   * lost only if the master and its replica both fail. The wait is bounded
   * ({@link REPLICA_WAIT_MS}): a replica that lags further is not waited for (availability
   * first), so it delays records, never blocks them.
   */
  private async accountDurably(c: AccountCall): Promise<number[]> {
    const replicas = this.replicas === undefined ? 0 : await this.replicas.of(c.keys[0]!);
    if (replicas <= 0) {
      return this.account(c.keys.length, ...c.keys, ...c.args);
    }
    // On a pipeline the defined command queues itself and returns the pipeline.
    type Queued = (numKeys: number, ...args: (string | number)[]) => ChainableCommander;
    const pipeline = this.redis.pipeline() as unknown as Record<typeof ACCOUNT_COMMAND, Queued>;
    const queued = pipeline[ACCOUNT_COMMAND](c.keys.length, ...c.keys, ...c.args);
    const [[err, reply] = [null, []]] = (await queued.wait(1, REPLICA_WAIT_MS).exec()) ?? [];
    if (err !== null) {
      throw err;
    }
    return reply as number[];
  }

  /**
   * Cluster layout: lists the records' tokens in {@link RedisNames.usageTokens} before their
   * first record is written (another slot, so not in the script), so that a query over all
   * tokens never misses a log. Once per token and process: SADD is idempotent, and a token
   * once listed stays listed.
   */
  private async register(writes: readonly UsageWrite[]): Promise<void> {
    const fresh = [...new Set(writes.map((w) => w.record.token_id))].filter((t) => !this.registered.has(t));
    if (fresh.length > 0) {
      await this.redis.sadd(this.names.usageTokens, ...fresh);
      fresh.forEach((t) => this.registered.add(t));
    }
  }

  /** The logs a query reads: the one log, or on a cluster the logs of the tokens asked for. */
  private async logsFor(tokenId: string | undefined): Promise<string[]> {
    if (!this.names.cluster) {
      return [this.names.usageLog];
    }
    const tokens = tokenId !== undefined ? [tokenId] : await this.redis.smembers(this.names.usageTokens);
    return tokens.map((t) => this.names.tokenUsage(t).log);
  }

  /** Records since `since` (epoch ms), oldest first, optionally filtered. */
  async query(filter: { since: number; tokenId?: string; model?: string }): Promise<UsageRecord[]> {
    const found: { id: string; record: UsageRecord }[] = [];
    let scanned = 0;
    for (const log of await this.logsFor(filter.tokenId)) {
      let start = String(filter.since);
      while (scanned < MAX_SCAN) {
        const batch = await this.redis.xrange(log, start, '+', 'COUNT', 5_000);
        for (const [id, fields] of batch) {
          const r = JSON.parse(fields[1] ?? '{}') as UsageRecord;
          if (
            (filter.tokenId === undefined || r.token_id === filter.tokenId) &&
            (filter.model === undefined || r.model === filter.model)
          ) {
            found.push({ id, record: r });
          }
        }
        scanned += batch.length;
        const last = batch.at(-1);
        if (last === undefined || batch.length < 5_000) {
          break;
        }
        start = `(${last[0]}`;
      }
    }
    // Several logs (cluster): merged by stream id, "<ms>-<seq>", which orders them in time.
    if (this.names.cluster) {
      found.sort((a, b) => compareStreamIds(a.id, b.id));
    }
    return found.map((f) => f.record);
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

  /** All-time counters of one token or model (on a cluster, a model's are the sum of its tokens' shares). */
  async totals(kind: 'token' | 'model', id: string): Promise<UsageTotals> {
    let keys: string[];
    if (kind === 'token') {
      keys = [this.names.tokenUsage(id).totals];
    } else if (!this.names.cluster) {
      keys = [this.names.usageByModel(id)];
    } else {
      keys = (await this.redis.smembers(this.names.usageTokens)).map((t) => this.names.tokenUsage(t).model(id));
    }
    const total = empty();
    for (const h of await Promise.all(keys.map((k) => this.redis.hgetall(k)))) {
      total.requests += Number(h.requests ?? 0);
      total.prompt_tokens += Number(h.prompt_tokens ?? 0);
      total.completion_tokens += Number(h.completion_tokens ?? 0);
      total.errors += Number(h.errors ?? 0);
    }
    return total;
  }
}

function compareStreamIds(a: string, b: string): number {
  const [am = 0, as = 0] = a.split('-').map(Number);
  const [bm = 0, bs = 0] = b.split('-').map(Number);
  return am - bm || as - bs;
}
