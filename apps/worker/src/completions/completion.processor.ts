import { AppConfig, COMPLETIONS_QUEUE, type CompletionJobData, type CompletionJobResult } from '@app/common';
import { Processor, WorkerHost } from '@nestjs/bullmq';
import type { OnApplicationBootstrap } from '@nestjs/common';
import type { Job } from 'bullmq';
import { CompletionRunner } from './completion-runner.service';

/**
 * `maxStalledCount: 0`: a job whose worker died is failed, never replayed by BullMQ,
 * because a replayed stream would duplicate tokens; the gateway alone decides retries.
 */
@Processor(COMPLETIONS_QUEUE, { concurrency: 1, maxStalledCount: 0 })
export class CompletionProcessor extends WorkerHost implements OnApplicationBootstrap {
  constructor(
    private readonly runner: CompletionRunner,
    private readonly config: AppConfig,
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
}
