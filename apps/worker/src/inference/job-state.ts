import type { Deployment, Produced } from '@app/common';

/** What one job has produced so far (for its usage record), and the deployment slot it holds. */
export interface JobState extends Produced {
  /** The deployment whose max_parallel_requests slot this job holds, if any. */
  holding?: Deployment;
}

/** `queueMs`: how long the job waited in its model's queue before this worker took it. */
export function newJobState(queueMs = 0): JobState {
  return { pieces: 0, chars: 0, deployment: null, firstAt: null, usage: null, queueMs };
}
