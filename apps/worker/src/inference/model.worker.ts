import type { CompletionJobData, CompletionJobResult } from '@app/common';
import { type Job, type Span, Worker, type WorkerOptions } from 'bullmq';

type InferenceJob = Job<CompletionJobData, CompletionJobResult>;

/**
 * BullMQ's Worker for one model's queue, which also hands on a freed slot of the model's
 * capacity (the queue's global concurrency) when BullMQ itself does not. BullMQ gives a freed
 * slot to the next waiting job only through the finishing Worker's own fetch (its finish
 * script takes the next job when asked to), and sets no marker for it otherwise. A Worker
 * that does not fetch (paused at WORKER_CONCURRENCY, or at its share of the process's slots)
 * so left the Workers blocked on the queue, here and in other processes, asleep until their
 * blocking fetch timed out (BullMQ's drainDelay, 5 s) while requests waited for a slot that
 * was free: a 5.2 s TTFT p99 in `npm run bench:scale-out` with two workers. `handleCompleted`
 * is BullMQ's protected hook for a finished job (the processor here never throws, so no job
 * ends as failed but by stalling); test/e2e/worker-concurrency.e2e.spec.ts catches an upgrade
 * that changes it.
 */
export class ModelWorker extends Worker<CompletionJobData, CompletionJobResult> {
  constructor(
    queue: string,
    processor: (job: InferenceJob) => Promise<CompletionJobResult>,
    opts: WorkerOptions,
    /** Called when a job of a model with a capacity ended and no next job was taken with it. */
    private readonly onSlotFreed: (() => void) | undefined,
  ) {
    super(queue, processor, opts);
  }

  protected override async handleCompleted(
    result: CompletionJobResult,
    job: InferenceJob,
    token: string,
    fetchNextCallback?: () => boolean,
    span?: Span,
  ): Promise<InferenceJob> {
    // BullMQ's declared type says Job, but it resolves undefined when it fetched none.
    const next = (await super.handleCompleted(result, job, token, fetchNextCallback, span)) as InferenceJob | undefined;
    // Closing, BullMQ finishes nothing more (and the connection may be going): no one to wake.
    if (next === undefined && this.closing === undefined) {
      this.onSlotFreed?.();
    }
    return next as InferenceJob;
  }
}
