import type { OperationName } from '../contracts/openai';

/** How a request ended, from the client's point of view. */
export type UsageOutcome = 'ok' | 'error' | 'client_disconnected' | 'timeout';

/** One record per completion request, kept in Redis for the configured retention. */
export interface UsageRecord {
  rid: string;
  token_id: string;
  /** Canonical model name ('' when the request named no known model). */
  model: string;
  deployment: string | null;
  route: string;
  /** The OpenAI operation (absent in records written before chat and embeddings existed). */
  op?: OperationName;
  status: number;
  outcome: UsageOutcome;
  /** Epoch ms when the gateway received the request. */
  started_at: number;
  latency_ms: number;
  /** Milliseconds the request waited in its model's queue for capacity (0: it found some at once). */
  queue_ms: number;
  /** First token as published by the worker, relative to started_at; null when none. */
  ttft_ms: number | null;
  prompt_tokens: number;
  completion_tokens: number;
  /** True when the backend reported no usage (e.g. the client disconnected) and it was counted locally. */
  usage_estimated: boolean;
  user: string | null;
  user_id: string | null;
  ip: string | null;
  user_agent: string | null;
}

/** What the gateway knows about the client; travels in the job so the worker can log the request. */
export interface RequestMeta {
  route: string;
  startedAt: number;
  ip: string | null;
  userAgent: string | null;
  user: string | null;
  userId: string | null;
}

export interface UsageTotals {
  requests: number;
  prompt_tokens: number;
  completion_tokens: number;
  errors: number;
}

/** Requests refused before admission, all-time: they have no usage records. */
export interface RefusalCount {
  token_id: string | null;
  model: string | null;
  status: number;
  count: number;
}

export interface UsageSummary extends UsageTotals {
  since: number;
  by_model: (UsageTotals & { model: string })[];
  by_token: (UsageTotals & { token_id: string })[];
  /** All-time refusal counters (not limited by `since`), filtered like the records. */
  refused: RefusalCount[];
}
