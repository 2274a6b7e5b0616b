import type { CancelCommand } from '@app/common';
import { Inject, Injectable } from '@nestjs/common';
import { ControlService } from '../control/control.service';
import { GatewayMetrics } from './gateway-metrics';

/**
 * ControlService that also counts the cancels it sends (`aqueduct_cancellations_total`).
 * Provided in place of ControlService, so the completion path needs no metrics code; it
 * inherits ControlService's constructor and injection.
 */
@Injectable()
export class MeteredControlService extends ControlService {
  @Inject(GatewayMetrics) private readonly metrics!: GatewayMetrics;

  override cancel(command: CancelCommand): void {
    this.metrics.countCancel(command.reason);
    super.cancel(command);
  }
}
