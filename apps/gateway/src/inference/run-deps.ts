import type { Clock } from '@app/common';
import type { ControlService } from '../control/control.service';
import type { CompletionQueue } from '../queue/completion-queue.service';
import type { RelayService } from '../relay/relay.service';
import type { GatewayUsage } from '../usage/usage.service';

/** The gateway services every InferenceRun uses, handed over once by InferenceService. */
export interface RunDeps {
  clock: Clock;
  relay: RelayService;
  queue: CompletionQueue;
  control: ControlService;
  usage: GatewayUsage;
  idleTimeoutMs: number;
}
