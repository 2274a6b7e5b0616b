import {
  ApiError,
  AppConfig,
  claimTtlMs,
  Clock,
  COMPLETION_JOB_VERSION,
  countOutput,
  type CompletionJobData,
  type CompletionJobResult,
  type Deployment,
  type ModelEntry,
} from '@app/common';
import { Injectable, Logger } from '@nestjs/common';
import type Redis from 'ioredis';
import { BackendError } from '../backends/backend-error';
import { BackendRegistry } from '../backends/backend-registry';
import { CancellationRegistry, CancelledError } from '../control/cancellation.registry';
import { InjectPublisher } from '../tokens';
import { jobUsageRecord } from '../usage/job-usage';
import { WorkerUsage } from '../usage/worker-usage.service';
import { WorkerIdentity } from '../worker-identity';
import { DeploymentSlots } from './deployment-slots';
import type { JobState } from './job-state';
import { RelayPublisher } from './relay-publisher';

class DeadlineError extends Error {}
class RelayLostError extends Error {}

/**
 * Runs one completion job: picks deployments (round robin, failing over to the next
 * one only while no token has been sent), drives the backend and publishes every chunk
 * to the gateway that owns the request. Never throws: the outcome is the job result,
 * and the client learns about failures through relay `error` messages.
 */
@Injectable()
export class CompletionRunner {
  private readonly logger = new Logger(CompletionRunner.name);
  private readonly roundRobin = new Map<string, number>();
  private readonly slots: DeploymentSlots;

  constructor(
    private readonly config: AppConfig,
    private readonly clock: Clock,
    private readonly identity: WorkerIdentity,
    private readonly cancellations: CancellationRegistry,
    private readonly backends: BackendRegistry,
    private readonly usage: WorkerUsage,
    @InjectPublisher() private readonly redis: Redis,
  ) {
    this.slots = new DeploymentSlots(redis, config.names, () => clock.now(), config.env.AQUEDUCT_SLOT_LEASE_MS);
  }

  async run(data: CompletionJobData): Promise<CompletionJobResult> {
    const state: JobState = { usage: null, pieces: 0, chars: 0 };
    const abort = this.cancellations.register(data.rid);
    const out = new RelayPublisher(this.redis, data.replyTo, data.rid, data.att, (why) =>
      abort?.abort(new RelayLostError(why)),
    );
    // Claim and `start` leave in one socket write (auto-pipelining); if the gateway had
    // already withdrawn the job, its session is gone and drops the `start`.
    const claimed = this.claim(data);
    const model = this.config.router.resolve(data.model);
    out.send({ t: 'start', workerId: this.identity.id, deployment: model?.deployments[0]?.id ?? '' });
    if (!(await claimed)) {
      this.cancellations.release(data.rid);
      return { outcome: 'cancelled' }; // the gateway withdrew it and accounted for it
    }
    if (abort === undefined) {
      await this.usage.record(jobUsageRecord(data, state, { outcome: 'cancelled' }, this.clock.now()), data.deadline);
      return { outcome: 'cancelled' };
    }
    const stopTimers = this.startTimers(data, abort, out, state);
    let result: CompletionJobResult;
    try {
      await this.execute(data, this.check(data, model), abort.signal, out, state);
      result = { outcome: 'ok', deployment: state.deployment };
    } catch (err) {
      result = this.report(err, abort.signal, out, state.deployment);
    } finally {
      stopTimers();
      this.cancellations.release(data.rid);
    }
    // Accounting is issued before awaiting the last publish, so both share a socket write.
    const accounted = this.usage.record(jobUsageRecord(data, state, result, this.clock.now()), data.deadline);
    await out.flush();
    await accounted;
    return result;
  }

  /** Takes ownership of the attempt; false when the gateway already withdrew it. */
  private async claim(data: CompletionJobData): Promise<boolean> {
    try {
      const key = this.config.names.claim(data.rid, data.att);
      const ttl = claimTtlMs(data.deadline, this.clock.now());
      return (await this.redis.set(key, this.identity.id, 'PX', ttl, 'NX')) !== null;
    } catch {
      return false; // Redis is down: nothing could be relayed or accounted anyway
    }
  }

  private check(data: CompletionJobData, model: ModelEntry | undefined): ModelEntry {
    if (data.v !== COMPLETION_JOB_VERSION) {
      throw ApiError.server(500, `This worker cannot run job version ${String(data.v)}; upgrade the workers.`);
    }
    if (this.clock.now() >= data.deadline) {
      throw new DeadlineError();
    }
    if (model === undefined) {
      throw ApiError.server(500, `The worker has no deployment for model '${data.model}' (router configs differ).`);
    }
    return model;
  }

  private async execute(
    data: CompletionJobData,
    model: ModelEntry,
    signal: AbortSignal,
    out: RelayPublisher,
    state: JobState,
  ): Promise<void> {
    let lastError: unknown;
    let candidates = this.order(model);
    for (;;) {
      // Waits while every deployment is at its max_parallel_requests.
      const d = await this.slots.pick(candidates, data.rid, signal);
      if (d === undefined) {
        throw lastError;
      }
      candidates = candidates.filter((c) => c !== d);
      state.holding = d;
      const backend = this.backends.for(d.provider);
      const req = { deployment: d, params: data.params, signal, deadline: this.deadlineFor(d, data) };
      state.deployment = d.id;
      try {
        if (data.stream) {
          for await (const ev of backend.stream(req)) {
            if (ev.type === 'usage') {
              state.usage = ev.usage;
              continue;
            }
            state.firstTokenAt ??= this.clock.now();
            countOutput(state, ev.choices);
            out.send({ t: 'chunk', choices: ev.choices, system_fingerprint: ev.system_fingerprint });
            // Only a job out-publishing Redis or the per-job rate waits here (see RelayPublisher).
            const wait = out.backpressure();
            if (wait !== undefined) {
              await wait;
            }
          }
          out.send({ t: 'done', usage: state.usage });
        } else {
          const r = await backend.complete(req);
          state.firstTokenAt = this.clock.now();
          state.usage = r.usage;
          state.chars = r.choices.reduce((n, c) => n + c.text.length, 0);
          // Split into bounded `part` messages when large; one `result` message otherwise.
          await out.sendResult(r, signal);
        }
        return;
      } catch (err) {
        const emitted = state.firstTokenAt !== undefined;
        if (signal.aborted || !(err instanceof BackendError) || !err.failover || emitted) {
          throw err;
        }
        this.logger.warn(`deployment ${d.id} failed before the first token (${err.status}); trying the next one`);
        lastError = err;
      } finally {
        state.holding = undefined;
        await this.slots.release(d, data.rid).catch(() => undefined);
      }
    }
  }

  private report(
    err: unknown,
    signal: AbortSignal,
    out: RelayPublisher,
    deployment: string | undefined,
  ): CompletionJobResult {
    const reason: unknown = signal.aborted ? signal.reason : err;
    if (reason instanceof CancelledError && reason.reason !== 'shutdown') {
      return { outcome: 'cancelled', deployment }; // nobody is listening any more
    }
    if (reason instanceof RelayLostError) {
      this.logger.warn(`job abandoned: ${reason.message}`);
      return { outcome: 'cancelled', deployment };
    }
    let error: ApiError;
    if (reason instanceof DeadlineError) {
      error = ApiError.server(504, 'The completion did not finish within its timeout.', 'timeout');
    } else if (reason instanceof CancelledError) {
      error = ApiError.server(503, 'The worker is shutting down. Please retry.', 'worker_shutdown', 1_000);
    } else if (reason instanceof ApiError) {
      error = reason;
    } else {
      this.logger.error(
        `unexpected failure: ${reason instanceof Error ? (reason.stack ?? reason.message) : String(reason)}`,
      );
      error = ApiError.server(500, 'The worker failed while processing the request.');
    }
    out.send({ t: 'error', status: error.status, error: error.body.error, retryAfterMs: error.retryAfterMs });
    return { outcome: error.status === 504 ? 'expired' : 'error', deployment, status: error.status };
  }

  /** Round robin over a model's deployments; the rest follow in order as failover targets. */
  private order(model: ModelEntry): Deployment[] {
    const n = model.deployments.length;
    const start = (this.roundRobin.get(model.name) ?? 0) % n;
    this.roundRobin.set(model.name, start + 1);
    return [...model.deployments.slice(start), ...model.deployments.slice(0, start)];
  }

  private deadlineFor(d: Deployment, data: CompletionJobData): number {
    return d.timeoutMs === undefined ? data.deadline : Math.min(data.deadline, this.clock.now() + d.timeoutMs);
  }

  /**
   * The job's deadline, heartbeats while the backend is silent (so the gateway's idle
   * timer trusts this worker through a long prefill), the cancel-flag fallback for
   * cancels whose control message was lost, and the renewal of a held deployment slot.
   */
  private startTimers(
    data: CompletionJobData,
    abort: AbortController,
    out: RelayPublisher,
    state: JobState,
  ): () => void {
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
    const renew = setInterval(() => {
      const holding = state.holding;
      if (holding !== undefined) {
        this.slots
          .renew(holding, data.rid)
          .then((held) => {
            if (!held) {
              this.logger.warn(`request ${data.rid}: its slot on ${holding.id} had expired`);
            }
          })
          .catch(() => undefined);
      }
    }, this.slots.renewEveryMs);
    return () => {
      clearTimeout(deadline);
      clearInterval(tick);
      clearInterval(renew);
    };
  }
}
