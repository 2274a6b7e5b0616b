import type { ModelEntry } from '../config/router-config';
import type { TokenPriority } from '../tokens/token-record';

/**
 * The order in which a model's waiting requests are dispatched, as a BullMQ job priority
 * (lower first; equal priorities in arrival order).
 *
 * BullMQ's round-robin groups are in the paid Pro edition only, so fairness is expressed
 * with the open-source edition's priorities: a job's priority is its token's priority band
 * plus its *turn*, the number of that token's requests for the model in flight (waiting or
 * running) when it was admitted, this one included. A token's first request goes in turn
 * 1, its fifteenth in turn 15: a newcomer's requests go ahead of a backlog's later ones,
 * so a token with many waiting requests delays another token by about one request per
 * competing token (the backlog's requests of earlier turns), not by its whole backlog.
 * Bands are far apart, so every `high` job goes before every `normal` one (strict
 * priority). The turn is bounded by the token's `max_parallel_requests`, so it never
 * grows with time (unlike start-time fair queueing's virtual clock, which would overflow
 * BullMQ's 2^21 priorities in a long busy period) and costs no extra Redis call: the
 * admission script counts it while it takes the token's concurrency lease.
 */
const BAND = 500_000;
const BANDS: Record<TokenPriority, number> = { high: 0, normal: 1, low: 2 };

export function jobPriority(priority: TokenPriority, turn: number): number {
  return BANDS[priority] * BAND + Math.min(Math.max(1, Math.floor(turn)), BAND - 1);
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
