import type { CompletionJobData } from '../contracts/completion-job';
import type { Usage } from '../contracts/openai';
import { OPERATIONS } from '../operations';
import type { OutputCount } from './usage-estimate';
import type { UsageOutcome, UsageRecord } from './usage-record';

/** What one attempt produced, as its worker saw it or as the gateway received it. */
export interface Produced extends OutputCount {
  deployment: string | null;
  /** Epoch ms of the first token (or result); null when none. */
  firstAt: number | null;
  /** The backend's own usage; null when it reported none (then it is estimated). */
  usage: Usage | null;
  /** Milliseconds the attempt waited in its model's queue for capacity. */
  queueMs: number;
}

/** An attempt no worker ran (withdrawn, or never enqueued): its record charges nothing. */
export const NOTHING_PRODUCED: Readonly<Produced> = {
  pieces: 0,
  chars: 0,
  deployment: null,
  firstAt: null,
  usage: null,
  queueMs: 0,
};

/**
 * The one builder of usage records, for workers (a job that ended) and gateways (a job no
 * worker ran, or one whose worker was lost): a record reads the same whoever wrote it.
 * Without backend usage, a request that produced nothing is charged nothing, and one that
 * did is estimated the operation's way.
 */
export function buildUsageRecord(
  job: Pick<CompletionJobData, 'rid' | 'op' | 'tokenId' | 'model' | 'stream' | 'params' | 'meta'>,
  produced: Readonly<Produced>,
  status: number,
  outcome: UsageOutcome,
  now: number,
): UsageRecord {
  const op = OPERATIONS[job.op];
  const made = produced.chars > 0;
  return {
    rid: job.rid,
    token_id: job.tokenId,
    model: job.model,
    deployment: produced.deployment,
    route: job.meta.route,
    op: job.op,
    status,
    outcome,
    started_at: job.meta.startedAt,
    latency_ms: now - job.meta.startedAt,
    queue_ms: Math.max(0, Math.round(produced.queueMs)),
    ttft_ms: produced.firstAt === null ? null : produced.firstAt - job.meta.startedAt,
    prompt_tokens: produced.usage?.prompt_tokens ?? (made ? op.promptTokens(job.params) : 0),
    completion_tokens: produced.usage?.completion_tokens ?? op.completionTokens(produced, job.stream),
    usage_estimated: produced.usage === null && made,
    user: job.meta.user,
    user_id: job.meta.userId,
    ip: job.meta.ip,
    user_agent: job.meta.userAgent,
  };
}
