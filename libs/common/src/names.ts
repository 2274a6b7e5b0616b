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

export function redisNames(prefix: string) {
  return {
    prefix,
    /** BullMQ's own key prefix; a model's queue is `<prefix>:bull:<modelQueueName>:*`. */
    bullPrefix: `${prefix}:bull`,
    /**
     * The lock BullMQ (6.x: `<queue key>:<jobId>:lock`) holds on an active job, renewed by
     * the worker process running it: its existence proves that process alive.
     */
    jobLock: (model: string, jobId: string) => `${prefix}:bull:${modelQueueName(model)}:${jobId}:lock`,
    /** HASH sha256(key) → token record JSON: auth is one HGET. */
    tokensByHash: `${prefix}:tokens:by-hash`,
    /** HASH token id → sha256(key), for listing and revocation by id. */
    tokensById: `${prefix}:tokens:by-id`,
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
    /** Stream of usage records (one per request), trimmed by age. */
    usageLog: `${prefix}:usage:log`,
    /** HASH of all-time counters per token / per model. */
    usageByToken: (tokenId: string) => `${prefix}:usage:token:${tokenId}`,
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
    usageClaim: (rid: string) => `${prefix}:usage:claim:${rid}`,
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
