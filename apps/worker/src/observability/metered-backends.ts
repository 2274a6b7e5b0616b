import type { Provider } from '@app/common';
import { BackendError } from '../backends/backend-error';
import { BackendRegistry } from '../backends/backend-registry';
import type { BackendRequest, BackendResult, LlmBackend, StreamEvent } from '../backends/llm-backend';
import type { WorkerMetrics } from './worker-metrics';

/**
 * The backend registry with every backend wrapped so that a failed call counts as an
 * upstream error of its deployment, whether or not the runner then fails over. Aborted
 * calls (cancel, deadline, shutdown) are not upstream errors and are not counted.
 */
export class MeteredBackendRegistry extends BackendRegistry {
  private readonly wrapped = new Map<LlmBackend, LlmBackend>();

  constructor(
    idleTimeoutMs: number,
    private readonly metrics: WorkerMetrics,
  ) {
    super(idleTimeoutMs);
  }

  override for(provider: Provider): LlmBackend {
    const backend = super.for(provider);
    let metered = this.wrapped.get(backend);
    if (metered === undefined) {
      metered = meter(backend, (req, err) => this.count(req, err));
      this.wrapped.set(backend, metered);
    }
    return metered;
  }

  private count(req: BackendRequest, err: unknown): void {
    if (!req.signal.aborted && err instanceof BackendError) {
      this.metrics.countUpstreamError(req.deployment.modelName, req.deployment.id, err.status);
    }
  }
}

function meter(backend: LlmBackend, onError: (req: BackendRequest, err: unknown) => void): LlmBackend {
  return {
    async complete(req: BackendRequest): Promise<BackendResult> {
      try {
        return await backend.complete(req);
      } catch (err) {
        onError(req, err);
        throw err;
      }
    },
    async *stream(req: BackendRequest): AsyncIterable<StreamEvent> {
      try {
        yield* backend.stream(req);
      } catch (err) {
        onError(req, err);
        throw err;
      }
    },
  };
}
