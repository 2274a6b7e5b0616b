import type { RedisClient } from '../redis/redis-factory';
import type { RedisNames } from '../names';

/**
 * Start-time fair queueing across the tokens waiting for one model, on BullMQ priorities.
 *
 * Each model has a virtual clock `v`: the tag of the job most recently handed to a worker
 * (advanced by the worker at pickup). A token's next request gets the tag
 * `max(v, min(last, v + turn - 1)) + 1`, where `last` is the token's previous tag and `turn`
 * its requests for the model in flight (see turns.ts): consecutive tags for a backlog, so
 * tokens with waiting requests are served one request each per round, and a token that
 * was idle starts right at the clock.
 *
 * A request that leaves the line without service (its wait limit passed, its client left)
 * gives its place back: the token's last tag moves back by one ({@link FairShare.refund}).
 * Without that, under overload a token whose requests time out keeps the tags they took,
 * its next requests land further back and time out too, while a luckier token stays near
 * the clock: the feedback that turns equal offered loads into very unequal service. With
 * it, a token's lead over the clock is what it really has waiting. The `turn` cap bounds
 * the lead the same way should a refund be lost (a gateway that died).
 *
 * BullMQ priorities are at most 2^21, and the clock grows without bound in a long busy
 * period, so every {@link REBASE_EVERY} units the clock, the tokens' last tags and the
 * epoch move: the script that hands out a tag does that atomically, and the caller then
 * re-prioritises the jobs still waiting from their tag and epoch (BullMQ's public
 * `changePriority`). Jobs that raced the rebase are corrected by that same pass.
 *
 * All of a model's state is one hash in the model's hash slot (the braces of the queue
 * name), so it works unchanged on a Redis Cluster.
 */
export const REBASE_EVERY = 400_000;

/** A job's place in the fair order: its tag within its epoch. */
export interface FairTag {
  tag: number;
  epoch: number;
}

/** KEYS[1] the model's hash; ARGV token id, turn, ttl ms, rebase_every. Returns { tag, epoch, rebased }. */
const TAG_LUA = `
local key = KEYS[1]
local v = tonumber(redis.call('HGET', key, 'v') or '0')
local epoch = tonumber(redis.call('HGET', key, 'e') or '0')
local every = tonumber(ARGV[4])
local rebased = 0
if v >= every then
  -- Move everything back by one period; tokens whose last tag falls behind the clock are forgotten.
  v = v - every
  epoch = epoch + 1
  local fields = redis.call('HGETALL', key)
  for i = 1, #fields, 2 do
    local f = fields[i]
    if string.sub(f, 1, 2) == 't:' then
      local t = tonumber(fields[i + 1]) - every
      if t <= v then
        redis.call('HDEL', key, f)
      else
        redis.call('HSET', key, f, t)
      end
    end
  end
  redis.call('HSET', key, 'v', v, 'e', epoch)
  rebased = 1
end
local field = 't:' .. ARGV[1]
local last = tonumber(redis.call('HGET', key, field) or '0')
local lead = math.min(last, v + tonumber(ARGV[2]) - 1)
local tag = math.max(v, lead) + 1
redis.call('HSET', key, field, tag)
redis.call('PEXPIRE', key, tonumber(ARGV[3]))
return { tag, epoch, rebased }
`;

/** KEYS[1] the model's hash; ARGV tag, epoch, rebase_every. Moves the clock forward to the job's tag. */
const ADVANCE_LUA = `
local key = KEYS[1]
local epoch = tonumber(redis.call('HGET', key, 'e') or '0')
local tag = tonumber(ARGV[1]) - (epoch - tonumber(ARGV[2])) * tonumber(ARGV[3])
if tag > tonumber(redis.call('HGET', key, 'v') or '0') then
  redis.call('HSET', key, 'v', tag)
end
return 1
`;

/** KEYS[1] the model's hash; ARGV token id. One unserved request's place given back (never behind the clock). */
const REFUND_LUA = `
local key = KEYS[1]
local field = 't:' .. ARGV[1]
local last = tonumber(redis.call('HGET', key, field) or '0')
local v = tonumber(redis.call('HGET', key, 'v') or '0')
if last - 1 > v then
  redis.call('HSET', key, field, last - 1)
else
  redis.call('HDEL', key, field)
end
return 1
`;

/** Idle models' state expires: a line that emptied an hour ago has nothing worth remembering. */
const STATE_TTL_MS = 3_600_000;

type TagCommand = (key: string, tokenId: string, turn: number, ttlMs: number, every: number) => Promise<number[]>;
type AdvanceCommand = (key: string, tag: number, epoch: number, every: number) => Promise<number>;
type RefundCommand = (key: string, tokenId: string) => Promise<number>;

export class FairShare {
  private readonly tagCmd: TagCommand;
  private readonly advanceCmd: AdvanceCommand;
  private readonly refundCmd: RefundCommand;

  constructor(
    redis: RedisClient,
    private readonly names: RedisNames,
    /** The rebase period; tests make it small. */
    private readonly every: number = REBASE_EVERY,
  ) {
    redis.defineCommand('aqueductFairTag', { numberOfKeys: 1, lua: TAG_LUA });
    redis.defineCommand('aqueductFairAdvance', { numberOfKeys: 1, lua: ADVANCE_LUA });
    redis.defineCommand('aqueductFairRefund', { numberOfKeys: 1, lua: REFUND_LUA });
    const commands = redis as unknown as {
      aqueductFairTag: TagCommand;
      aqueductFairAdvance: AdvanceCommand;
      aqueductFairRefund: RefundCommand;
    };
    this.tagCmd = commands.aqueductFairTag.bind(redis);
    this.advanceCmd = commands.aqueductFairAdvance.bind(redis);
    this.refundCmd = commands.aqueductFairRefund.bind(redis);
  }

  /** The tag of a token's next request for a model; `rebased` asks the caller to re-prioritise the line. */
  async tag(model: string, tokenId: string, turn: number): Promise<FairTag & { rebased: boolean }> {
    const [tag = 1, epoch = 0, rebased = 0] = await this.tagCmd(
      this.names.fairShare(model),
      tokenId,
      turn,
      STATE_TTL_MS,
      this.every,
    );
    return { tag, epoch, rebased: rebased === 1 };
  }

  /** One of the token's requests left the model's line unserved: its place is given back. */
  async refund(model: string, tokenId: string): Promise<void> {
    await this.refundCmd(this.names.fairShare(model), tokenId);
  }

  /** A worker took a job with this tag: the model's clock is now at least there. */
  async advance(model: string, fair: FairTag): Promise<void> {
    await this.advanceCmd(this.names.fairShare(model), fair.tag, fair.epoch, this.every);
  }
}

/** A tag of an older epoch in the terms of `epoch` (the rebase pass and the clock use it). */
export function tagIn(fair: FairTag, epoch: number, every: number = REBASE_EVERY): number {
  return fair.tag - (epoch - fair.epoch) * every;
}
