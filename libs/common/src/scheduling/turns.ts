import type { ModelEntry } from '../config/router-config';
import type { TokenPriority } from '../tokens/token-record';

/**
 * The order in which a model's waiting requests are dispatched, as a BullMQ job priority
 * (lower first; equal priorities in arrival order). BullMQ's round-robin groups are in the
 * paid Pro edition only, so fairness is expressed with the open-source edition's priorities:
 * a job's priority is its token's priority band plus its place within the band.
 *
 * - For a model with a capacity (its requests wait for it), the place is the request's
 *   start-time fair queueing tag (fair-share.ts): tokens with waiting requests are served in
 *   turns, one request each per round, whatever their backlogs.
 * - For an unlimited model, requests wait only for a free worker slot, briefly; they are
 *   served in arrival order within their band (a constant place).
 *
 * A request's *turn*, its token's requests for the model in flight when it was admitted
 * (counted by the admission script), bounds its fair tag's lead over the clock.
 *
 * Bands are far apart, so every `high` job goes before every `normal` one (strict
 * priority); three bands fill BullMQ's 2^21 priorities.
 */
export const PRIORITY_BAND = 699_050;
const BANDS: Record<TokenPriority, number> = { high: 0, normal: 1, low: 2 };

/** `place`: the fair tag, or 1 for an unlimited model (see above). */
export function jobPriority(priority: TokenPriority, place: number): number {
  return BANDS[priority] * PRIORITY_BAND + Math.min(Math.max(1, Math.floor(place)), PRIORITY_BAND - 1);
}

/**
 * How many of a model's requests may run at once across every worker: the sum of its
 * deployments' `max_parallel_requests`, or undefined (unlimited) when any deployment has
 * none. Set as the model queue's BullMQ global concurrency, so a job is only handed to a
 * worker when some deployment has room for it.
 */
export function modelCapacity(model: ModelEntry): number | undefined {
  let sum = 0;
  for (const d of model.deployments) {
    if (d.maxParallelRequests === undefined) {
      return undefined;
    }
    sum += d.maxParallelRequests;
  }
  return sum;
}
