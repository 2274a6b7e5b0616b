import type { CompletionJobData, CompletionJobResult, UsageOutcome, UsageRecord } from '@app/common';
import type { JobState } from '../completions/job-state';

/**
 * Token counts when the backend reported none (a stream cut short by a disconnect, an
 * upstream that sends no usage). Token-id prompts are exact; text uses the common
 * ~4 characters per token rule. Records say when their usage was estimated.
 */
function estimatePromptTokens(prompt: unknown): number {
  if (typeof prompt === 'string') {
    return Math.ceil(prompt.length / 4);
  }
  if (!Array.isArray(prompt)) {
    return 0;
  }
  return prompt.reduce<number>((sum, p) => {
    if (typeof p === 'number') {
      return sum + 1;
    }
    return sum + (Array.isArray(p) ? p.length : estimatePromptTokens(p));
  }, 0);
}

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
    completion_tokens: state.usage?.completion_tokens ?? (data.stream ? state.pieces : Math.ceil(state.chars / 4)),
    usage_estimated: state.usage === null && state.chars > 0,
    user: data.meta.user,
    user_id: data.meta.userId,
    ip: data.meta.ip,
    user_agent: data.meta.userAgent,
  };
}
