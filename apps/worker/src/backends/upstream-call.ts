import type { Dispatcher, Pool } from 'undici';
import { BackendError } from './backend.error';
import type { BackendRequest } from './llm-backend';
import {
  fromUpstreamStatus,
  scrubSecrets,
  upstreamConnectionLost,
  upstreamStalled,
  upstreamTerminated,
  upstreamTimeout,
  upstreamUnavailable,
} from './upstream-errors';
import type { ReadChunk } from './upstream-sse';

/** setTimeout fires at once for delays above 2^31-1 ms; a far deadline must not do that. */
const MAX_TIMER_MS = 2_147_483_647;
/** Error bodies are only read for their message; anything bigger is not an OpenAI error. */
const ERROR_BODY_LIMIT = 64 * 1024;
/**
 * Bodies larger than this are joined, decoded and parsed in event-loop turns of their own
 * (a 40 MB body took about 0.25 s per step).
 */
export const LARGE_BODY_BYTES = 1024 * 1024;

type Body = Dispatcher.ResponseData['body'];

/**
 * One HTTP exchange with an upstream: owns the abort controller that the client's signal,
 * the deadline and the idle timer all feed, remembers *why* it was aborted so the failure
 * maps to the right status, and releases the socket whatever happens. Use once:
 * `send`, read, then `dispose()` in a finally block.
 */
export class UpstreamCall {
  private readonly ctl = new AbortController();
  private stoppedBy: 'deadline' | 'idle' | null = null;
  private deadlineTimer: NodeJS.Timeout | undefined;
  private body: Body | undefined;
  private readonly forwardAbort = (): void => this.ctl.abort(this.req.signal.reason);

  constructor(
    private readonly req: BackendRequest,
    private readonly stream: boolean,
    private readonly idleTimeoutMs: number,
  ) {}

  /** Sends the request; resolves with a 2xx response, throws the mapped error otherwise. */
  async send(pool: Pool, path: string, body: string): Promise<Dispatcher.ResponseData> {
    const { req } = this;
    req.signal.throwIfAborted();
    const remaining = req.deadline - Date.now();
    if (remaining <= 0) {
      throw upstreamTimeout();
    }
    this.deadlineTimer = setTimeout(() => this.stop('deadline'), Math.min(remaining, MAX_TIMER_MS));
    req.signal.addEventListener('abort', this.forwardAbort, { once: true });

    const headers: Record<string, string> = {
      'content-type': 'application/json',
      accept: this.stream ? 'text/event-stream' : 'application/json',
    };
    if (req.deployment.apiKey !== undefined) {
      headers.authorization = `Bearer ${req.deployment.apiKey}`;
    }
    const res = await pool.request({
      method: 'POST',
      path,
      headers,
      body,
      signal: this.ctl.signal,
      // Our own deadline and idle timer decide; undici's 300 s defaults would only mislabel them.
      headersTimeout: 0,
      bodyTimeout: 0,
    });
    this.body = res.body;
    if (res.statusCode < 200 || res.statusCode > 299) {
      const { text } = await readText(res.body, ERROR_BODY_LIMIT);
      throw fromUpstreamStatus(res.statusCode, parseJsonOrUndefined(text), res.headers);
    }
    return res;
  }

  /** Body reads that fail the call when the upstream sends nothing for `idleTimeoutMs`. */
  reader(body: Body): ReadChunk {
    const chunks = body[Symbol.asyncIterator]();
    return async () => {
      // Armed only while waiting for the upstream: a slow consumer is not an upstream stall.
      const timer = setTimeout(() => this.stop('idle'), this.idleTimeoutMs);
      try {
        const next = await chunks.next();
        return next.done === true ? null : (next.value as Buffer);
      } finally {
        clearTimeout(timer);
      }
    };
  }

  /**
   * After `[DONE]`, reads the (normally empty) rest of the body so that undici can put the
   * keep-alive socket back into the pool instead of closing it.
   */
  async drain(read: ReadChunk, limitBytes = 64 * 1024): Promise<void> {
    try {
      for (let seen = 0; seen <= limitBytes;) {
        const bytes = await read();
        if (bytes === null) {
          return;
        }
        seen += bytes.length;
      }
    } catch {
      // The completion is already whole; losing the socket now only costs a reconnect.
    }
  }

  /**
   * The error to throw for a failure of this call. A client abort is rethrown as the
   * signal's reason (the caller checks `signal.aborted`); everything else becomes a
   * BackendError with no secret in it.
   */
  failure(err: unknown): unknown {
    if (this.req.signal.aborted) {
      return this.req.signal.reason;
    }
    let mapped: BackendError;
    if (this.stoppedBy === 'deadline') {
      mapped = upstreamTimeout();
    } else if (this.stoppedBy === 'idle') {
      mapped = upstreamStalled(this.idleTimeoutMs);
    } else if (err instanceof BackendError) {
      mapped = err;
    } else if (this.body === undefined) {
      mapped = upstreamUnavailable(err);
    } else {
      mapped = this.stream ? upstreamTerminated() : upstreamConnectionLost();
    }
    return scrubSecrets(mapped, this.req.deployment.apiKey);
  }

  dispose(): void {
    clearTimeout(this.deadlineTimer);
    this.req.signal.removeEventListener('abort', this.forwardAbort);
    if (this.body !== undefined && !this.body.readableEnded) {
      // Unread body: destroying it aborts the request, so the upstream stops generating.
      this.body.destroy();
    }
  }

  private stop(cause: 'deadline' | 'idle'): void {
    this.stoppedBy ??= cause;
    this.ctl.abort(new Error(`upstream call stopped: ${cause}`));
  }
}

/**
 * Reads a body as UTF-8 up to `limit` bytes; the rest is left for dispose() to discard.
 * A large body is joined and decoded in separate event-loop turns (see yieldToLoop): for
 * 40 MB the two took over 0.4 s together.
 */
export async function readText(body: Body, limit: number): Promise<{ text: string; truncated: boolean }> {
  const parts: Buffer[] = [];
  let size = 0;
  let truncated = false;
  for await (const chunk of body) {
    const bytes = chunk as Buffer;
    size += bytes.length;
    if (size > limit) {
      truncated = true;
      break;
    }
    parts.push(bytes);
  }
  const joined = Buffer.concat(parts);
  if (joined.length > LARGE_BODY_BYTES) {
    await yieldToLoop();
  }
  return { text: joined.toString('utf8'), truncated };
}

/**
 * A turn of the event loop (timers and I/O run) between steps of synchronous work on a large
 * body: the job's lock renewal, the worker's heartbeat and its other streams must not wait
 * behind all of it (it held the loop for 1.8 s for a 40 MB result, and a lock renewal
 * missed for longer than half a lease makes the job look lost).
 */
export function yieldToLoop(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}

export function parseJsonOrUndefined(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return undefined;
  }
}
