import { AppConfig, type CancelCommand, CONTROL_CLIENT } from '@app/common';
import { Inject, Injectable, Logger, type OnApplicationShutdown } from '@nestjs/common';
import type { ClientRedis } from '@nestjs/microservices';
import { InjectRedis } from '../redis/redis.tokens';
import type { RedisClient } from '@app/common';

/**
 * Sends control messages to workers. A cancel is broadcast on the control channel (the
 * gateway does not track which worker holds a job) and also left as a flag key, because
 * pub/sub is at-most-once and a worker checks the flag before it starts a job.
 */
@Injectable()
export class ControlService implements OnApplicationShutdown {
  private readonly logger = new Logger(ControlService.name);

  constructor(
    private readonly config: AppConfig,
    @Inject(CONTROL_CLIENT) private readonly client: ClientRedis,
    @InjectRedis() private readonly redis: RedisClient,
  ) {}

  cancel(command: CancelCommand): void {
    this.client.emit(this.config.names.control.cancel, command).subscribe({
      error: (err: Error) => this.logger.warn(`cancel ${command.rid} not broadcast: ${err.message}`),
    });
    this.redis.set(this.config.names.cancelFlag(command.rid), command.reason, 'EX', 600).catch((err: Error) => {
      this.logger.warn(`cancel flag for ${command.rid} not set: ${err.message}`);
    });
  }

  async onApplicationShutdown(): Promise<void> {
    await this.client.close();
  }
}
