import { AppConfig, CancelledError, Clock, type CompletionJobData, DeadlineError } from '@app/common';
import { Injectable, Logger } from '@nestjs/common';
import type { RedisClient } from '@app/common';
import { InjectPublisher } from '../tokens';
import { DeploymentPicker } from './deployment.picker';
import type { JobState } from './job-state';
import type { RelayPublisher } from './relay.publisher';

/**
 * The timers of one running job: its deadline, heartbeats while the backend is silent (so
 * the gateway's idle timer trusts this worker through a long prefill), the cancel-flag
 * fallback for cancels whose control message was lost, and the renewal of a held
 * deployment slot. `watch` returns the function that stops them all.
 */
@Injectable()
export class JobWatchdog {
  private readonly logger = new Logger(JobWatchdog.name);

  constructor(
    private readonly config: AppConfig,
    private readonly clock: Clock,
    private readonly picker: DeploymentPicker,
    @InjectPublisher() private readonly redis: RedisClient,
  ) {}

  watch(data: CompletionJobData, abort: AbortController, out: RelayPublisher, state: JobState): () => void {
    const deadline = setTimeout(() => abort.abort(new DeadlineError()), Math.max(0, data.deadline - this.clock.now()));
    const tickMs = Math.min(2_000, Math.floor(this.config.env.AQUEDUCT_IDLE_TIMEOUT_MS / 3));
    const tick = setInterval(() => {
      if (this.clock.now() - out.lastSentAt >= tickMs) {
        out.send({ t: 'hb' });
      }
      this.redis
        .exists(this.config.names.cancelFlag(data.rid))
        .then((n) => n > 0 && abort.abort(new CancelledError('client_disconnected')))
        .catch(() => undefined);
    }, tickMs);
    // Its own cadence: a lease shorter than the heartbeat tick must still be renewed in time.
    const slots = this.picker.slots;
    const renew = setInterval(() => {
      const holding = state.holding;
      if (holding !== undefined) {
        slots
          .renew(holding, data.rid)
          .then((held) => {
            if (!held) {
              this.logger.warn(`request ${data.rid}: its slot on ${holding.id} had expired`);
            }
          })
          .catch(() => undefined);
      }
    }, slots.renewEveryMs);
    return () => {
      clearTimeout(deadline);
      clearInterval(tick);
      clearInterval(renew);
    };
  }
}
