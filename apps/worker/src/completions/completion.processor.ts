import { AppConfig, COMPLETIONS_QUEUE, type CompletionJobData, type CompletionJobResult } from '@app/common';
import { OnWorkerEvent, Processor, WorkerHost } from '@nestjs/bullmq';
import { type BeforeApplicationShutdown, Logger, type OnApplicationBootstrap } from '@nestjs/common';
import type { Job } from 'bullmq';
import { CancellationRegistry } from '../control/cancellation.registry';
import { HeartbeatService } from '../control/heartbeat.service';
import { CompletionRunner } from './completion-runner.service';

/**
 * `maxStalledCount: 0`: a job whose worker died is failed, never replayed by BullMQ,
 * because a replayed stream would duplicate tokens; the gateway alone decides retries.
 */
@Processor(COMPLETIONS_QUEUE, { concurrency: 1, maxStalledCount: 0 })
export class CompletionProcessor extends WorkerHost implements OnApplicationBootstrap, BeforeApplicationShutdown {
  private readonly logger = new Logger(CompletionProcessor.name);

  constructor(
    private readonly runner: CompletionRunner,
    private readonly config: AppConfig,
    private readonly heartbeat: HeartbeatService,
    private readonly cancellations: CancellationRegistry,
  ) {
    super();
  }

  onApplicationBootstrap(): void {
    // @Processor options are static; the configured concurrency is applied here.
    this.worker.concurrency = this.config.env.WORKER_CONCURRENCY;
  }

  process(job: Job<CompletionJobData, CompletionJobResult>): Promise<CompletionJobResult> {
    return this.runner.run(job.data);
  }

  /**
   * SIGTERM: stop taking jobs (waiting ones stay queued for other workers), let the
   * in-flight ones finish within the grace period, then cancel the rest so that their
   * clients get an error they can retry instead of a stream that silently stops.
   */
  async beforeApplicationShutdown(): Promise<void> {
    await this.heartbeat.drain();
    const closed = this.worker.close();
    const graceMs = this.config.env.AQUEDUCT_SHUTDOWN_GRACE_MS;
    let timer: NodeJS.Timeout | undefined;
    const expired = await Promise.race([
      closed.then(() => false),
      new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), graceMs))),
    ]);
    clearTimeout(timer);
    if (expired) {
      this.logger.warn(`grace period over: cancelling ${this.cancellations.activeCount} job(s)`);
      this.cancellations.cancelAll('shutdown');
      await closed;
    }
  }

  /** BullMQ emits 'error' for connection problems; without a listener Node would crash. */
  @OnWorkerEvent('error')
  onError(err: Error): void {
    this.logger.warn(`queue worker: ${err.message}`);
  }

  @OnWorkerEvent('failed')
  onFailed(job: Job | undefined, err: Error): void {
    // Only stalls end here (the processor never throws): the worker holding the job died.
    this.logger.warn(`job ${job?.id ?? '?'} failed: ${err.message}`);
  }
}
