import {
  AppConfig,
  COMPLETIONS_QUEUE,
  type CompletionJobData,
  type CompletionJobResult,
  ConnectionStateLog,
  endBullmq,
  redisUsable,
  sleep,
  trackBullmq,
} from '@app/common';
import { OnWorkerEvent, Processor, WorkerHost } from '@nestjs/bullmq';
import { type BeforeApplicationShutdown, Logger, type OnApplicationBootstrap } from '@nestjs/common';
import type { Job } from 'bullmq';
import { CancellationRegistry } from '../control/cancellation.registry';
import { HeartbeatService } from '../control/heartbeat.service';
import { InferenceRunner } from './inference.runner';

/** After the grace period, how long cancelled jobs get to end (error event, usage record). */
const CANCELLED_SETTLE_MS = 600;
/** After ending the worker's connections, how long close() gets to notice. */
const FORCED_CLOSE_SETTLE_MS = 200;

/**
 * `maxStalledCount: 0`: a job whose worker died is failed, never replayed by BullMQ,
 * because a replayed stream would duplicate tokens; the gateway alone decides retries.
 */
@Processor(COMPLETIONS_QUEUE, { concurrency: 1, maxStalledCount: 0 })
export class InferenceProcessor extends WorkerHost implements OnApplicationBootstrap, BeforeApplicationShutdown {
  private readonly logger = new Logger(InferenceProcessor.name);
  private readonly connection = ConnectionStateLog.for('queue');

  constructor(
    private readonly runner: InferenceRunner,
    private readonly config: AppConfig,
    private readonly heartbeat: HeartbeatService,
    private readonly cancellations: CancellationRegistry,
  ) {
    super();
  }

  onApplicationBootstrap(): void {
    // @Processor options are static; the configured concurrency is applied here.
    this.worker.concurrency = this.config.env.WORKER_CONCURRENCY;
    this.worker.getBackend().on('ready', () => this.connection.ready(this.worker));
    trackBullmq(this.worker);
  }

  process(job: Job<CompletionJobData, CompletionJobResult>): Promise<CompletionJobResult> {
    return this.runner.run(job.data);
  }

  /**
   * SIGTERM: stop taking jobs (waiting ones stay queued for other workers), let the
   * in-flight ones finish within the grace period, then cancel the rest so that their
   * clients get an error they can retry instead of a stream that silently stops.
   * BullMQ's close() never returns while Redis is unreachable (it waits for its blocking
   * connection), so when no job is left to wait for and Redis cannot answer, or once the
   * cancelled jobs had their moment, the worker's connections are ended without Redis.
   */
  async beforeApplicationShutdown(): Promise<void> {
    await this.heartbeat.drain();
    const closed = this.worker.close().then(
      () => true,
      () => true,
    );
    const graceMs = this.config.env.AQUEDUCT_SHUTDOWN_GRACE_MS;
    const idle = { stop: false };
    let done = await Promise.race([closed, sleep(graceMs).then(() => false), this.idleWithoutRedis(idle)]);
    idle.stop = true;
    if (!done && this.cancellations.activeCount > 0) {
      this.logger.warn(`grace period over: cancelling ${this.cancellations.activeCount} job(s)`);
      this.cancellations.cancelAll('shutdown');
      done = await Promise.race([closed, sleep(CANCELLED_SETTLE_MS).then(() => false)]);
    }
    if (!done) {
      this.logger.warn('the queue worker cannot close through Redis: ending its connections');
      await endBullmq(this.worker);
      await Promise.race([closed, sleep(FORCED_CLOSE_SETTLE_MS)]);
    }
  }

  /**
   * Resolves `false` once no job runs here and the worker's Redis connection is down: then
   * close() has nothing to wait for and can only hang. Never resolves while Redis is up.
   */
  private async idleWithoutRedis(until: { stop: boolean }): Promise<false> {
    // The client promise settles only once the connection was first set up: a worker that
    // booted without Redis has none yet, and that counts as "cannot answer".
    const pending = this.worker.getBackend().client;
    while (!until.stop) {
      const client = await Promise.race([pending.catch(() => undefined), sleep(0)]);
      if (this.cancellations.activeCount === 0 && (client === undefined || !redisUsable(client))) {
        break;
      }
      await sleep(100);
    }
    return false;
  }

  /** BullMQ emits 'error' for connection problems; without a listener Node would crash. */
  @OnWorkerEvent('error')
  onError(err: Error): void {
    this.connection.error(err, this.worker);
  }

  @OnWorkerEvent('failed')
  onFailed(job: Job | undefined, err: Error): void {
    // Only stalls end here (the processor never throws): the worker holding the job died.
    this.logger.warn(`job ${job?.id ?? '?'} failed: ${err.message}`);
  }
}
