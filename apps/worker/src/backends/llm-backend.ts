import type { ChoiceDelta, Deployment, Usage } from '@app/common';

/** What a backend is asked to do: one deployment, the client's parameters, a way to stop. */
export interface BackendRequest {
  deployment: Deployment;
  /**
   * The client's completion parameters as the job carries them, without `model`,
   * `stream`, `stream_options` and `user_id` (the backend sets those itself). A backend
   * that calls an upstream forwards only COMPLETION_PARAMS and the deployment's
   * `extraBodyAllowed` (see pickCompletionParams).
   */
  params: Record<string, unknown>;
  /** Aborted on client disconnect, cancel, deadline or shutdown. */
  signal: AbortSignal;
  /** Epoch ms: the backend fails with 504 if no answer has completed by then. */
  deadline: number;
}

export interface CompletionResult {
  choices: ChoiceDelta[];
  usage: Usage | null;
  system_fingerprint?: string;
}

export type StreamEvent =
  | { type: 'chunk'; choices: ChoiceDelta[]; system_fingerprint?: string }
  /** The total usage of the whole request, as the upstream's final usage chunk reports it. */
  | { type: 'usage'; usage: Usage };

/**
 * A model backend. Failures are thrown as {@link BackendError} so that the runner can
 * decide between failing over to another deployment (only before the first token) and
 * reporting the error to the client.
 */
export interface LlmBackend {
  complete(req: BackendRequest): Promise<CompletionResult>;
  stream(req: BackendRequest): AsyncIterable<StreamEvent>;
}
