import {
  AppConfig,
  type CompletionJobData,
  type CompletionJobResult,
  ConnectionStateLog,
  endBullmq,
  modelCapacity,
  ModelQueues,
  modelQueueName,
  redisUsable,
  sleep,
  trackBullmq,
} from '@app/common';
import { type BeforeApplicationShutdown, Injectable, Logger, type OnApplicationBootstrap } from '@nestjs/common';
import type { Job, Worker } from 'bullmq';
import { CancellationRegistry } from '../control/cancellation.registry';
import { HeartbeatService } from '../control/heartbeat.service';
import { InferenceRunner } from './inference.runner';
import { ModelWorker } from './model.worker';

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
 * WORKER_CONCURRENCY bounds the jobs of the whole process, not of each Worker. BullMQ fetches
 * a Worker's jobs one after another, up to its `concurrency`, before it starts any of them, so
 * a Worker left at WORKER_CONCURRENCY would take that many on its own during a burst (one
 * process ran 13 jobs at WORKER_CONCURRENCY 4 with 4 models). Each Worker's concurrency is
 * therefore its running jobs plus its share of the process's free slots (rounded up, never
 * above WORKER_CONCURRENCY), set again whenever a job starts or ends; once the process runs
 * that many in all, every Worker pauses fetching until one ends. A fetch already blocked in
 * Redis when they pause, and the rounding, may still bring one job per model more for a
 * moment: the bound is WORKER_CONCURRENCY plus at most one job per model (one model alone
 * never passes WORKER_CONCURRENCY).
 */
@Injectable()
export class InferenceProcessor implements OnApplicationBootstrap, BeforeApplicationShutdown {
  private readonly logger = new Logger(InferenceProcessor.name);
  private readonly connection = ConnectionStateLog.for('queue');
  private readonly workers: Worker<CompletionJobData, CompletionJobResult>[] = [];
  /** Jobs running, per Worker (its queue's name) and in all. */
  private readonly running = new Map<string, number>();
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
    // Idle, every Worker's share of the free slots (see the class comment).
    const share = Math.ceil(config.env.WORKER_CONCURRENCY / Math.max(1, config.router.models.length));
    // Created here, not at bootstrap: a worker that boots without Redis already sees errors,
    // and BullMQ's 'error' must have a listener before then or Node would crash.
    for (const model of config.router.models) {
      const freed =
        modelCapacity(model) === undefined
          ? undefined
          : () =>
              void queues
                .wake(model.name)
                .catch((err: Error) => this.logger.warn(`could not wake ${model.name}: ${err.message}`));
      const queue = modelQueueName(model.name);
      const worker = new ModelWorker(
        queue,
        (job) => this.process(queue, job),
        {
          connection: queues.connection,
          prefix: config.names.bullPrefix,
          concurrency: share,
          maxStalledCount: 0,
          // A dead worker's jobs count against their model's capacity (the queue's global
          // concurrency) until BullMQ finds them stalled: within a lock duration plus a check
          // interval. Tied to the deployment slot lease, so both come back about together.
          lockDuration: config.env.AQUEDUCT_SLOT_LEASE_MS,
          stalledInterval: Math.max(100, Math.floor(config.env.AQUEDUCT_SLOT_LEASE_MS / 3)),
          // After a connection error its fetch loop waits this long before fetching again
          // (BullMQ's default: 15 s). A cluster failover left workers idle that long after the
          // new master was up (measured: 15.7 s to the first answer, against about 3 s); now
          // about as soon as the connection is back (reconnectDelay retries every 2 s at most).
          runRetryDelay: 1_000,
          autorun: false,
        },
        freed,
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

  private async process(queue: string, job: InferenceJob): Promise<CompletionJobResult> {
    this.count(queue, 1);
    try {
      const queueMs = job.processedOn === undefined ? 0 : Math.max(0, job.processedOn - job.timestamp);
      return await this.runner.run(job.data, queueMs);
    } finally {
      this.count(queue, -1);
    }
  }

  /** A job of `queue` started (+1) or ended (-1): shares the free slots out again (see the class comment). */
  private count(queue: string, delta: 1 | -1): void {
    this.running.set(queue, (this.running.get(queue) ?? 0) + delta);
    this.active += delta;
    if (this.workers.length === 1) {
      return; // one Worker: its own concurrency is the process's bound
    }
    const bound = this.config.env.WORKER_CONCURRENCY;
    const free = bound - this.active;
    const share = Math.max(1, Math.ceil(free / this.workers.length));
    for (const worker of this.workers) {
      // The Worker whose job just ended keeps room for the one BullMQ fetches in the same
      // script as it finishes that job, which is how a model at its capacity hands its freed
      // slot to the next request in line.
      const finishing = delta === -1 && worker.name === queue ? 1 : 0;
      worker.concurrency = Math.min(bound, (this.running.get(worker.name) ?? 0) + finishing + share);
    }
    if (free <= 0 && !this.paused) {
      this.setPaused(true);
    } else if (free > 0 && this.paused) {
      this.setPaused(false);
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
