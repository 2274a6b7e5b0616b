/**
 * The BullMQ job payload. Versioned so that gateways and workers can be deployed out of
 * step: a worker refuses (with a clear error) a version it does not know.
 */
import type { RequestMeta } from '../usage/usage-record';
import type { FairTag } from '../scheduling/fair-share';
import type { TokenPriority } from '../tokens/token-record';
import type { OperationName } from './openai';

/**
 * 2: jobs name their operation (`op`), and non-stream results travel as `output`/raw parts.
 * 3: one queue per model; jobs carry their token's `priority` and their `queueDeadline`.
 */
export const COMPLETION_JOB_VERSION = 3 as const;

export interface CompletionJobData {
  v: typeof COMPLETION_JOB_VERSION;
  /** Request id; also the OpenAI response id (`cmpl-<rid>`, `chatcmpl-<rid>`). */
  rid: string;
  /** Which OpenAI operation: decides the upstream route, the parameters and the output shape. */
  op: OperationName;
  /** Attempt number; a pre-first-token re-enqueue increments it, stale attempts are dropped. */
  att: number;
  /** Pub/sub channel of the gateway instance that holds the client connection. */
  replyTo: string;
  /**
   * Set by gateways that accept batched relay messages (a JSON array of messages in one
   * PUBLISH, see RelayOutbox): a worker batches only for those, so a gateway of an older
   * release keeps getting one message per PUBLISH during a rolling upgrade.
   */
  replyBatched?: true;
  /** Canonical model name (aliases already resolved by the gateway). */
  model: string;
  stream: boolean;
  /**
   * The client's OpenAI parameters of `op` to forward, plus the extensions some deployment of the
   * model allows (`extra_body_allowed`), minus the fields the gateway owns (`model`,
   * `stream`, `stream_options`, `user_id`). Workers filter again per deployment.
   */
  params: Record<string, unknown>;
  /** Epoch ms after which the result is useless: workers drop expired jobs at pickup. */
  deadline: number;
  /**
   * Epoch ms until which the job may wait for capacity (AQUEDUCT_MAX_QUEUE_WAIT_MS, never past
   * `deadline`). The gateway withdraws it then; a job found waiting past it had a gateway that
   * died, and the worker drops it without calling the upstream.
   */
  queueDeadline: number;
  tokenId: string;
  /** The token's scheduling priority, for the usage record and the queue-wait metrics. */
  priority: TokenPriority;
  /** Its fair-queueing tag, for a model with a capacity: the worker advances the model's clock to it. */
  fair?: FairTag;
  /** Who asked, for the usage record the worker writes when the job ends. */
  meta: RequestMeta;
}

/** What the processor returns; kept small because BullMQ stores it until removal. */
export interface CompletionJobResult {
  outcome: 'ok' | 'error' | 'cancelled' | 'expired' | 'orphaned';
  deployment?: string;
  status?: number;
}

/** How long an attempt's claim key lives: a minute past its deadline, when no worker may start it any more. */
export function claimTtlMs(deadline: number, now: number): number {
  return Math.max(0, deadline - now) + 60_000;
}

/** BullMQ job ids may not contain ':' and must be unique per attempt. */
export function completionJobId(rid: string, att: number): string {
  return `${rid}.${att}`;
}
