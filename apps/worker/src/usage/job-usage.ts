import {
  buildUsageRecord,
  type CompletionJobData,
  type CompletionJobResult,
  type UsageOutcome,
  type UsageRecord,
} from '@app/common';
import type { JobState } from '../inference/job-state';

const OUTCOMES: Record<CompletionJobResult['outcome'], UsageOutcome> = {
  ok: 'ok',
  cancelled: 'client_disconnected',
  expired: 'timeout',
  error: 'error',
  orphaned: 'client_disconnected',
};

/** The usage record of one finished job, from its payload, what it produced and how it ended. */
export function jobUsageRecord(
  data: CompletionJobData,
  state: JobState,
  result: CompletionJobResult,
  now: number,
): UsageRecord {
  const outcome = OUTCOMES[result.outcome];
  const status = result.status ?? (outcome === 'client_disconnected' ? 499 : 200);
  return buildUsageRecord(data, state, status, outcome, now);
}
