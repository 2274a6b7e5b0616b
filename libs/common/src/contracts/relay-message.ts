import type { OpenAIErrorBody, ResultItem, StreamChoice, Usage } from './openai';

/**
 * Messages a worker publishes to the inbox of the gateway that owns the request.
 * `seq` starts at 0 and increases by one per message within an attempt, so the
 * gateway detects loss (a gap) and duplicates (a repeat); `done`/`error`/`result`
 * are terminal and nothing follows them.
 */
interface Envelope {
  rid: string;
  att: number;
  seq: number;
}

export interface StartMessage extends Envelope {
  t: 'start';
  workerId: string;
  deployment: string;
}

/** One stream chunk's choices, already in the wire shape of the operation (text or chat deltas). */
export interface ChunkMessage extends Envelope {
  t: 'chunk';
  choices: StreamChoice[];
  system_fingerprint?: string;
}

/** Sent while the upstream is silent (long prefill) so that idle timers keep trusting the worker. */
export interface HeartbeatMessage extends Envelope {
  t: 'hb';
}

export interface DoneMessage extends Envelope {
  t: 'done';
  usage: Usage | null;
}

/**
 * A slice of the JSON text of a non-stream result's output array (`choices` or `data`) too
 * large for one message (see {@link RELAY_PART_MAX_BYTES}). The gateway writes the slices
 * to the client as they are, in order, without parsing them: the `result` that follows
 * carries no `output` then, only usage. A pub/sub message is delivered whole into the
 * subscriber's output buffer, so one 40 MB result would overflow Redis's pub/sub buffer
 * limit and drop the gateway's inbox connection, failing every request on it.
 */
export interface PartMessage extends Envelope {
  t: 'part';
  raw: string;
}

/** The whole non-stream result, or only its usage after `part` messages carried the output. */
export interface ResultMessage extends Envelope {
  t: 'result';
  /** `choices` (completion, chat) or `data` (embeddings); absent when parts carried it. */
  output?: ResultItem[];
  usage: Usage | null;
  system_fingerprint?: string;
}

/** Largest serialized relay message a worker publishes for a non-stream result. */
export const RELAY_PART_MAX_BYTES = 256 * 1024;

export interface ErrorMessage extends Envelope {
  t: 'error';
  status: number;
  error: OpenAIErrorBody;
  retryAfterMs?: number;
}

export type RelayMessage =
  StartMessage | ChunkMessage | HeartbeatMessage | DoneMessage | PartMessage | ResultMessage | ErrorMessage;

/** Control plane (gateway → workers), carried by the @nestjs/microservices Redis transport. */
export interface CancelCommand {
  rid: string;
  reason: 'client_disconnected' | 'timeout' | 'slow_client' | 'shutdown';
}

export interface WorkerHeartbeat {
  workerId: string;
  /** Jobs in flight right now and the configured maximum. */
  active: number;
  concurrency: number;
  draining: boolean;
}
