import type { Deployment, Usage } from '@app/common';

/** What one job produced, for its usage record. */
export interface JobState {
  deployment?: string;
  /** The deployment whose max_parallel_requests slot this job holds, if any. */
  holding?: Deployment;
  usage: Usage | null;
  firstTokenAt?: number;
  /** Text pieces sent, for estimating usage when the backend reports none. */
  pieces: number;
  chars: number;
}
