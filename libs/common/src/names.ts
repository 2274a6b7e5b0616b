/**
 * Every Redis key, channel and queue name, defined once. All of them live under
 * AQUEDUCT_REDIS_PREFIX so that deployments and test runs can share one Redis.
 */
/**
 * The BullMQ queue of one model: every model has its own, so that a model without free
 * capacity holds back only its own jobs (BullMQ's global concurrency is per queue). BullMQ
 * forbids ':' in queue names, so the model name is URI-encoded (which also encodes braces);
 * the braces around it make it the Redis Cluster hash tag, so that each model's queue
 * keys share one slot and different models' queues spread over the shards.
 */
export function modelQueueName(model: string): string {
  return `inference-{${encodeURIComponent(model)}}`;
}

/**
 * The keys of one token's usage: its records, its all-time counters, its share of a model's
 * counters and its requests' usage claims. The accounting script (usage-store.ts) writes
 * them together with the token's rate-limit window in one call, so on a cluster they all
 * carry the token's hash tag, as the limiter does.
 */
export interface TokenUsageKeys {
  log: string;
  totals: string;
  model: (model: string) => string;
  claim: (rid: string) => string;
}

/**
 * @param cluster the key layout of a Redis Cluster (AQUEDUCT_REDIS_CLUSTER): the same keys,
 *   except those that a script or MULTI writes together with keys of another name, which
 *   then share a hash tag (`{...}`) so that each call stays in one slot. One Redis keeps the
 *   layout it always had, so that an existing deployment's data stays where it is.
 */
export function redisNames(prefix: string, cluster = false) {
  const tokenUsage = (tokenId: string): TokenUsageKeys =>
    cluster
      ? {
          // Per token, not one log for all: one stream on one slot would take every
          // record of the deployment to one shard, and every accounting call would have
          // to touch it together with the token's limiter, in another slot.
          log: `${prefix}:usage:{${tokenId}}:log`,
          totals: `${prefix}:usage:{${tokenId}}:totals`,
          model: (model) => `${prefix}:usage:{${tokenId}}:model:${model}`,
          claim: (rid) => `${prefix}:usage:{${tokenId}}:claim:${rid}`,
        }
      : {
          log: `${prefix}:usage:log`,
          totals: `${prefix}:usage:token:${tokenId}`,
          model: (model) => `${prefix}:usage:model:${model}`,
          claim: (rid) => `${prefix}:usage:claim:${rid}`,
        };
  const bullJob = (model: string, jobId: string) => `${prefix}:bull:${modelQueueName(model)}:${jobId}`;
  return {
    prefix,
    /** Which layout these names are (see the `cluster` parameter). */
    cluster,
    /** BullMQ's own key prefix; a model's queue is `<prefix>:bull:<modelQueueName>:*`. */
    bullPrefix: `${prefix}:bull`,
    /**
     * The lock BullMQ (6.x: `<queue key>:<jobId>:lock`) holds on an active job, renewed by
     * the worker process running it: its existence proves that process alive.
     */
    jobLock: (model: string, jobId: string) => `${bullJob(model, jobId)}:lock`,
    /**
     * The HASH of one BullMQ job (`<queue key>:<jobId>`): there from the add until the job
     * ends (finished jobs are removed at once, see JobQueueService.enqueue).
     */
    job: bullJob,
    /**
     * HASH sha256(key) → token record JSON: auth is one HGET. On a cluster it shares a hash tag
     * with {@link tokensById}: a token is created in one MULTI on both.
     */
    tokensByHash: cluster ? `${prefix}:{tokens}:by-hash` : `${prefix}:tokens:by-hash`,
    /** HASH token id → sha256(key), for listing and revocation by id. */
    tokensById: cluster ? `${prefix}:{tokens}:by-id` : `${prefix}:tokens:by-id`,
    /** Pub/sub inbox of one gateway instance: every chunk for its requests arrives here. */
    gatewayInbox: (gatewayId: string) => `${prefix}:relay:${gatewayId}`,
    /** HASH of one-second buckets: the token's sliding 60-second rate-limit window. */
    limiter: (tokenId: string) => `${prefix}:limits:{${tokenId}}`,
    /** ZSET request id → lease expiry: the token's admitted requests (max_parallel_requests). */
    tokenLeases: (tokenId: string) => `${prefix}:inflight:{${tokenId}}`,
    /**
     * ZSET request id → lease expiry: the token's admitted requests for one model. Its size
     * is the request's turn, which bounds its fair-queueing lead (see scheduling/turns.ts).
     */
    tokenModelLeases: (tokenId: string, model: string) => `${prefix}:inflight:{${tokenId}}:${model}`,
    /**
     * HASH "<token id>|<model>|<status>" → count of requests refused before admission. Fixed
     * size (tokens × models × statuses): a flood of refusals never grows Redis.
     */
    refusals: `${prefix}:usage:refusals`,
    /**
     * HASH of one model's fair-queueing state (virtual clock, epoch, tokens' last tags), in the
     * hash slot of the model's queue (same braces), see scheduling/fair-share.ts.
     */
    fairShare: (model: string) => `${prefix}:sched:{${encodeURIComponent(model)}}`,
    /** ZSET of in-flight leases of one deployment (max_parallel_requests across workers). */
    deploymentSlots: (deploymentId: string) => `${prefix}:slots:${deploymentId}`,
    /**
     * A token's usage keys ({@link TokenUsageKeys}): with one Redis, the stream of every usage
     * record (one per request, trimmed by age), the HASHes of all-time counters per token and
     * per model, and the usage claims; on a cluster, the same per token, in the token's slot.
     */
    tokenUsage,
    /**
     * SET of the token ids that have usage keys (cluster layout only): a query for all tokens
     * reads their logs, and a model's all-time counters are the sum of its tokens' shares.
     */
    usageTokens: `${prefix}:usage:tokens`,
    /** One Redis: the stream of every usage record, trimmed by age (= `tokenUsage(any).log`). */
    usageLog: `${prefix}:usage:log`,
    /** One Redis: HASHes of all-time counters per token / per model. */
    usageByToken: (tokenId: string) => tokenUsage(tokenId).totals,
    usageByModel: (model: string) => `${prefix}:usage:model:${model}`,
    /** Flag that a request was cancelled; the fallback when the control message is lost. */
    cancelFlag: (rid: string) => `${prefix}:cancel:${rid}`,
    /**
     * Who owns one attempt: set with NX by the worker at pickup, or by the gateway when it
     * withdraws the job. Exactly one wins, so exactly one of them writes the usage record
     * (BullMQ's remove() cannot tell "removed" from "already gone").
     */
    claim: (rid: string, att: number) => `${prefix}:claim:${rid}.${att}`,
    /**
     * Who wrote a request's usage record once a worker had started it: set with NX, in the
     * same script as the record, by the worker when the job ends, or by the gateway when it
     * gave up on the worker (lost mid-stream, past the deadline). A worker that was only slow
     * and finishes later finds it taken and writes nothing: one record per request, also
     * across attempts.
     */
    usageClaim: (rid: string, tokenId: string) => tokenUsage(tokenId).claim(rid),
    /** ZSET worker id → epoch ms of its last heartbeat; lets a fresh gateway see live workers. */
    workers: `${prefix}:workers`,
    /** Control-plane patterns carried by the @nestjs/microservices Redis transport. */
    control: {
      cancel: `${prefix}:ctl:cancel`,
      heartbeat: `${prefix}:ctl:heartbeat`,
      drain: `${prefix}:ctl:drain`,
    },
  } as const;
}

export type RedisNames = ReturnType<typeof redisNames>;
