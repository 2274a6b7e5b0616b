import {
  type CompletionJobData,
  type CompletionJobResult,
  estimateCompletionTokens,
  estimatePromptTokens,
  type UsageOutcome,
  type UsageRecord,
} from '@app/common';
import type { JobState } from '../completions/job-state';

const OUTCOMES: Record<CompletionJobResult['outcome'], UsageOutcome> = {
  ok: 'ok',
  cancelled: 'client_disconnected',
  expired: 'timeout',
  error: 'error',
};

/** The usage record of one finished job, from its payload, what it produced and how it ended. */
export function jobUsageRecord(
  data: CompletionJobData,
  state: JobState,
  result: CompletionJobResult,
  now: number,
): UsageRecord {
  const outcome = OUTCOMES[result.outcome];
  return {
    rid: data.rid,
    token_id: data.tokenId,
    model: data.model,
    deployment: state.deployment ?? null,
    route: data.meta.route,
    status: result.status ?? (outcome === 'client_disconnected' ? 499 : 200),
    outcome,
    started_at: data.meta.startedAt,
    latency_ms: now - data.meta.startedAt,
    ttft_ms: state.firstTokenAt === undefined ? null : state.firstTokenAt - data.meta.startedAt,
    // Without backend usage, a request that produced nothing is charged nothing.
    prompt_tokens: state.usage?.prompt_tokens ?? (state.chars > 0 ? estimatePromptTokens(data.params.prompt) : 0),
    completion_tokens: state.usage?.completion_tokens ?? estimateCompletionTokens(state, data.stream),
    usage_estimated: state.usage === null && state.chars > 0,
    user: data.meta.user,
    user_id: data.meta.userId,
    ip: data.meta.ip,
    user_agent: data.meta.userAgent,
  };
}
