import { AppConfig, Clock, type Deployment, type ModelEntry } from '@app/common';
import { Injectable } from '@nestjs/common';
import type { RedisClient } from '@app/common';
import { InjectPublisher } from '../tokens';
import { DeploymentSlots } from './deployment.slots';

/**
 * Which deployment serves a job: round robin over the model's deployments, the rest in
 * order as failover targets, each taken only with a free max_parallel_requests slot.
 */
@Injectable()
export class DeploymentPicker {
  private readonly roundRobin = new Map<string, number>();
  readonly slots: DeploymentSlots;

  constructor(config: AppConfig, clock: Clock, @InjectPublisher() redis: RedisClient) {
    this.slots = new DeploymentSlots(redis, config.names, () => clock.now(), config.env.AQUEDUCT_SLOT_LEASE_MS);
  }

  /** The model's deployments in the order this job tries them. */
  order(model: ModelEntry): Deployment[] {
    const n = model.deployments.length;
    const start = (this.roundRobin.get(model.name) ?? 0) % n;
    this.roundRobin.set(model.name, start + 1);
    return [...model.deployments.slice(start), ...model.deployments.slice(0, start)];
  }

  /** The first candidate with a free slot, waiting while all are full; undefined when none is left. */
  pick(candidates: readonly Deployment[], rid: string, signal: AbortSignal): Promise<Deployment | undefined> {
    return this.slots.pick(candidates, rid, signal);
  }

  release(d: Deployment, rid: string): Promise<void> {
    return this.slots.release(d, rid).catch(() => undefined);
  }
}
