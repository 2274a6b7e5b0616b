/**
 * Admission of one request in one script: the token's concurrency leases and its rate
 * limits are checked together and reserved only when both pass, so a request refused for
 * one reason never consumes the other budget.
 *
 * Concurrency: a ZSET of leases (member = request id, score = lease expiry). Leases, not
 * a counter: a gateway that dies stops renewing its leases and they expire, so a token's
 * slots always come back.
 *
 * Rate limits: atomic per-token limit check over a sliding 60-second window kept as one-second buckets
 * in a single HASH: fields r:<sec> (request weight), i:<sec> (input tokens), o:<sec>
 * (output tokens). Checking and reserving the request weight happen in one script, so
 * concurrent requests cannot all pass (the race of a read-then-write check).
 *
 * The request's turn (see scheduling/turns.ts) is the size, once it is admitted, of a second
 * lease ZSET: the token's requests for this model only. Only a model with a capacity has
 * one (ARGV[9] = '1'): the turn bounds its fair-queueing lead, and no other model needs it.
 *
 * KEYS[1] limiter hash, KEYS[2] lease ZSET, KEYS[3] the token's lease ZSET for the model;
 * ARGV: now_ms, weight, rpm, itpm, otpm (a limit < 0 = no limit), max_parallel, lease_ms,
 * request id, whether to count the turn ('1' or '0').
 * Returns { denied (0 ok | 1 requests | 2 input tokens | 3 output tokens | 4 concurrency),
 *           request weight used (a string: Lua numbers become integers), input used,
 *           output used, ms until the refused request would pass,
 *           ms until the request, input and output budgets are whole again,
 *           requests in flight including this one when admitted,
           the token's requests for the model in flight including this one (its turn; 0 when
           not counted) }.
 * Kept in a TypeScript string so that the build ships it without copying assets.
 */
export const ADMISSION_LUA = `
local key = KEYS[1]
local now = tonumber(ARGV[1])
local weight = tonumber(ARGV[2])
local rpm = tonumber(ARGV[3])
local itpm = tonumber(ARGV[4])
local otpm = tonumber(ARGV[5])
local max_parallel = tonumber(ARGV[6])
local lease_ms = tonumber(ARGV[7])
local leases = KEYS[2]
redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
local inflight = redis.call('ZCARD', leases)
local limited = rpm >= 0 or itpm >= 0 or otpm >= 0
local sec = math.floor(now / 1000)
local oldest = sec - 59

local per = { r = {}, i = {}, o = {} }
local used = { r = 0, i = 0, o = 0 }
local stale = {}
local fields = {}
if limited then
  fields = redis.call('HGETALL', key)
end
for n = 1, #fields, 2 do
  local f = fields[n]
  local kind = string.sub(f, 1, 1)
  local s = tonumber(string.sub(f, 3))
  local v = tonumber(fields[n + 1])
  if s == nil or per[kind] == nil or s < oldest then
    stale[#stale + 1] = f
  else
    per[kind][s] = (per[kind][s] or 0) + v
    used[kind] = used[kind] + v
  end
end
if #stale > 0 then
  redis.call('HDEL', key, unpack(stale))
end

-- ms until the usage of one kind drops to target, as old buckets leave the window
local function wait_until(kind, target)
  local total = used[kind]
  if total <= target + 1e-9 then
    return 0
  end
  for s = oldest, sec do
    total = total - (per[kind][s] or 0)
    if total <= target + 1e-9 then
      return (s + 60) * 1000 - now
    end
  end
  return 60000
end

local denied = 0
if inflight >= max_parallel then
  denied = 4
elseif rpm >= 0 and used.r + weight > rpm + 1e-9 then
  denied = 1
elseif itpm >= 0 and used.i >= itpm then
  denied = 2
elseif otpm >= 0 and used.o >= otpm then
  denied = 3
end
if denied == 0 and rpm >= 0 then
  redis.call('HINCRBYFLOAT', key, 'r:' .. sec, weight)
  used.r = used.r + weight
  per.r[sec] = (per.r[sec] or 0) + weight
end
local turn = 0
if denied == 0 then
  redis.call('ZADD', leases, now + lease_ms, ARGV[8])
  redis.call('PEXPIRE', leases, lease_ms * 2)
  inflight = inflight + 1
  if ARGV[9] == '1' then
    local model_leases = KEYS[3]
    redis.call('ZREMRANGEBYSCORE', model_leases, '-inf', now)
    redis.call('ZADD', model_leases, now + lease_ms, ARGV[8])
    redis.call('PEXPIRE', model_leases, lease_ms * 2)
    turn = redis.call('ZCARD', model_leases)
  end
end
if limited then
  redis.call('PEXPIRE', key, 61000)
end

local retry = 0
if denied == 1 then
  retry = wait_until('r', math.max(rpm - weight, 0))
elseif denied == 2 then
  retry = wait_until('i', itpm - 1)
elseif denied == 3 then
  retry = wait_until('o', otpm - 1)
end
return { denied, tostring(used.r), used.i, used.o, retry, wait_until('r', 0), wait_until('i', 0), wait_until('o', 0), inflight, turn }
`;
