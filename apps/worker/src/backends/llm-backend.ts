import type { Deployment, OperationName, ResultItem, StreamChoice, Usage } from '@app/common';

/** What a backend is asked to do: one operation on one deployment, the client's parameters, a way to stop. */
export interface BackendRequest {
  op: OperationName;
  deployment: Deployment;
  /**
   * The client's parameters as the job carries them, without `model`, `stream`,
   * `stream_options` and `user_id` (the backend sets those itself). A backend that calls an
   * upstream forwards only the operation's OpenAI parameters and the deployment's
   * `extraBodyAllowed` (see pickUpstreamParams).
   */
  params: Record<string, unknown>;
  /** Aborted on client disconnect, cancel, deadline or shutdown. */
  signal: AbortSignal;
  /** Epoch ms: the backend fails with 504 if no answer has completed by then. */
  deadline: number;
}

/**
 * A whole non-stream answer: `output` is the response's `choices` (completion: ChoiceDelta,
 * chat: ChatChoice) or `data` (embeddings: EmbeddingObject), already in OpenAI's wire shape.
 */
export interface BackendResult {
  output: ResultItem[];
  usage: Usage | null;
  system_fingerprint?: string;
}

export type StreamEvent =
  /** One chunk's choices in the operation's wire shape (completion: ChoiceDelta, chat: ChatChunkChoice). */
  | { type: 'chunk'; choices: StreamChoice[]; system_fingerprint?: string }
  /** The total usage of the whole request, as the upstream's final usage chunk reports it. */
  | { type: 'usage'; usage: Usage };

/**
 * A model backend. Failures are thrown as {@link BackendError} so that the runner can
 * decide between failing over to another deployment (only before the first token) and
 * reporting the error to the client. `stream` is never called for embeddings.
 */
export interface LlmBackend {
  complete(req: BackendRequest): Promise<BackendResult>;
  stream(req: BackendRequest): AsyncIterable<StreamEvent>;
}
