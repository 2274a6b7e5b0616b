import { ApiError, CancelledError, type CompletionJobResult, DeadlineError, RelayLostError } from '@app/common';

/** How a job that threw ends: the error its client gets (none when nobody listens), and its result. */
export interface JobFailure {
  error?: ApiError;
  result: CompletionJobResult;
  /** Worth a log line: an abandoned job (warn) or a bug (error). */
  log?: { level: 'warn' | 'error'; message: string };
}

/**
 * Maps why a job stopped (the abort reason when its signal fired, else what was thrown) to
 * what the client sees. Pure: the runner publishes and records what this decides.
 */
export function jobFailure(reason: unknown, deployment: string | undefined): JobFailure {
  if (reason instanceof CancelledError && reason.reason !== 'shutdown') {
    return { result: { outcome: 'cancelled', deployment } }; // nobody is listening any more
  }
  if (reason instanceof RelayLostError) {
    return {
      result: { outcome: 'cancelled', deployment },
      log: { level: 'warn', message: `job abandoned: ${reason.message}` },
    };
  }
  let error: ApiError;
  let log: JobFailure['log'];
  if (reason instanceof DeadlineError) {
    error = ApiError.server(504, 'The completion did not finish within its timeout.', 'timeout');
  } else if (reason instanceof CancelledError) {
    error = ApiError.server(503, 'The worker is shutting down. Please retry.', 'worker_shutdown', 1_000);
  } else if (reason instanceof ApiError) {
    error = reason;
  } else {
    const detail = reason instanceof Error ? (reason.stack ?? reason.message) : String(reason);
    log = { level: 'error', message: `unexpected failure: ${detail}` };
    error = ApiError.server(500, 'The worker failed while processing the request.');
  }
  const outcome = error.status === 504 ? 'expired' : 'error';
  return { error, result: { outcome, deployment, status: error.status }, log };
}
