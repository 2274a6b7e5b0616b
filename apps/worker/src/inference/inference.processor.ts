import {
  AppConfig,
  type CompletionJobData,
  type CompletionJobResult,
  ConnectionStateLog,
  endBullmq,
  ModelQueues,
  modelQueueName,
  redisUsable,
  sleep,
  trackBullmq,
} from '@app/common';
import { type BeforeApplicationShutdown, Injectable, Logger, type OnApplicationBootstrap } from '@nestjs/common';
import { type Job, Worker } from 'bullmq';
import { CancellationRegistry } from '../control/cancellation.registry';
import { HeartbeatService } from '../control/heartbeat.service';
import { InferenceRunner } from './inference.runner';

/** After the grace period, how long cancelled jobs get to end (error event, usage record). */
const CANCELLED_SETTLE_MS = 600;
/** After ending the worker's connections, how long close() gets to notice. */
const FORCED_CLOSE_SETTLE_MS = 200;

type InferenceJob = Job<CompletionJobData, CompletionJobResult>;

/**
 * Takes jobs from every model's queue: one BullMQ Worker per model, each blocking on its
 * own queue (no polling), so a model whose deployments are full (its queue at its global
 * concurrency) holds no slot of this process and the other models keep flowing.
 *
 * `maxStalledCount: 0`: a job whose worker died is failed, never replayed by BullMQ,
 * because a replayed stream would duplicate tokens; the gateway alone decides retries.
 *
 * WORKER_CONCURRENCY bounds the jobs of the whole process: each Worker may take that many,
 * and once the process runs that many in all, every Worker pauses fetching until one ends.
 * A fetch already blocked in Redis when they pause may still bring one job each, so the
 * bound can be passed by at most one job per model for a moment.
 */
@Injectable()
export class InferenceProcessor implements OnApplicationBootstrap, BeforeApplicationShutdown {
  private readonly logger = new Logger(InferenceProcessor.name);
  private readonly connection = ConnectionStateLog.for('queue');
  private readonly workers: Worker<CompletionJobData, CompletionJobResult>[] = [];
  private active = 0;
  private paused = false;
  private closing = false;

  constructor(
    private readonly runner: InferenceRunner,
    private readonly config: AppConfig,
    private readonly queues: ModelQueues,
    private readonly heartbeat: HeartbeatService,
    private readonly cancellations: CancellationRegistry,
  ) {
    // Created here, not at bootstrap: a worker that boots without Redis already sees errors,
    // and BullMQ's 'error' must have a listener before then or Node would crash.
    for (const model of config.router.models) {
      const worker = new Worker<CompletionJobData, CompletionJobResult>(
        modelQueueName(model.name),
        (job) => this.process(job),
        {
          connection: queues.connection,
          prefix: config.names.bullPrefix,
          concurrency: config.env.WORKER_CONCURRENCY,
          maxStalledCount: 0,
          // A dead worker's jobs count against their model's capacity (the queue's global
          // concurrency) until BullMQ finds them stalled: within a lock duration plus a check
          // interval. Tied to the deployment slot lease, so both come back about together.
          lockDuration: config.env.AQUEDUCT_SLOT_LEASE_MS,
          stalledInterval: Math.max(100, Math.floor(config.env.AQUEDUCT_SLOT_LEASE_MS / 3)),
          autorun: false,
        },
      );
      worker.on('error', (err) => this.connection.error(err, worker));
      worker.on('failed', (job, err) => {
        // Only stalls end here (the processor never throws): the worker holding the job died.
        this.logger.warn(`job ${job?.id ?? '?'} failed: ${err.message}`);
      });
      worker.getBackend().on('ready', () => this.connection.ready(worker));
      trackBullmq(worker);
      this.workers.push(worker);
    }
  }

  onApplicationBootstrap(): void {
    const apply = () =>
      this.queues.applyCapacities().catch((err: Error) => this.logger.warn(`could not set capacities: ${err.message}`));
    // Again after every reconnect: a Redis that restarted empty has lost them.
    this.queues.connection.on('ready', () => void apply());
    if (this.queues.connection.status === 'ready') {
      void apply();
    }
    for (const worker of this.workers) {
      void worker.run().catch((err: Error) => this.logger.error(`queue worker stopped: ${err.message}`));
    }
  }

  private async process(job: InferenceJob): Promise<CompletionJobResult> {
    this.active += 1;
    if (this.active >= this.config.env.WORKER_CONCURRENCY && this.workers.length > 1) {
      this.setPaused(true);
    }
    try {
      const queueMs = job.processedOn === undefined ? 0 : Math.max(0, job.processedOn - job.timestamp);
      return await this.runner.run(job.data, queueMs);
    } finally {
      this.active -= 1;
      if (this.paused && this.active < this.config.env.WORKER_CONCURRENCY) {
        this.setPaused(false);
      }
    }
  }

  private setPaused(paused: boolean): void {
    if (this.closing && !paused) {
      return;
    }
    this.paused = paused;
    for (const worker of this.workers) {
      void (paused ? worker.pause(true) : worker.resume());
    }
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
    this.closing = true;
    await this.heartbeat.drain();
    const closed = Promise.all(this.workers.map((w) => w.close().catch(() => undefined))).then(() => true);
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
      this.logger.warn('the queue workers cannot close through Redis: ending their connections');
      await Promise.all(this.workers.map((w) => endBullmq(w)));
      await Promise.race([closed, sleep(FORCED_CLOSE_SETTLE_MS)]);
    }
  }

  /**
   * Resolves `false` once no job runs here and the workers' Redis connection is down: then
   * close() has nothing to wait for and can only hang. Never resolves while Redis is up.
   */
  private async idleWithoutRedis(until: { stop: boolean }): Promise<false> {
    while (!until.stop) {
      if (this.cancellations.activeCount === 0 && !redisUsable(this.queues.connection)) {
        break;
      }
      await sleep(100);
    }
    return false;
  }
}
