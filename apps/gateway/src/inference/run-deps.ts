import type { Clock } from '@app/common';
import type { ControlService } from '../control/control.service';
import type { GatewayMetrics } from '../observability/gateway-metrics';
import type { DrainEstimator } from '../queue/drain-estimator';
import type { JobQueueService } from '../queue/job-queue.service';
import type { RelayService } from '../relay/relay.service';
import type { UsageService } from '../usage/usage.service';

/** The gateway services every InferenceRun uses, handed over once by InferenceService. */
export interface RunDeps {
  clock: Clock;
  relay: RelayService;
  queue: JobQueueService;
  control: ControlService;
  usage: UsageService;
  metrics: Pick<GatewayMetrics, 'observeQueueWait'>;
  drain: DrainEstimator;
  idleTimeoutMs: number;
}
