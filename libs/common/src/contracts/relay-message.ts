import type { ChoiceDelta, OpenAIErrorBody, Usage } from './openai';

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

export interface ChunkMessage extends Envelope {
  t: 'chunk';
  choices: ChoiceDelta[];
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

/** The whole non-stream completion in one message. */
export interface ResultMessage extends Envelope {
  t: 'result';
  choices: ChoiceDelta[];
  usage: Usage | null;
  system_fingerprint?: string;
}

export interface ErrorMessage extends Envelope {
  t: 'error';
  status: number;
  error: OpenAIErrorBody;
  retryAfterMs?: number;
}

export type RelayMessage = StartMessage | ChunkMessage | HeartbeatMessage | DoneMessage | ResultMessage | ErrorMessage;

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
