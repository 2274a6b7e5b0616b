import { ApiError, type ChunkMessage, type RelayMessage, type ResponseMeta, type Usage } from '@app/common';
import type { Response } from 'express';
import { sendApiError } from '../http/error-response';
import { markFirstToken } from '../http/request-state';
import { type LateHeaders, type Responder, setLateHeaders } from './responder';

export interface SseOptions {
  /** `object` of every chunk: `text_completion` or `chat.completion.chunk`. */
  chunkObject: string;
  includeUsage: boolean;
  /** Hold the status this long waiting for the first token, then commit 200 anyway. */
  commitTimeoutMs: number;
  /** Bytes the client may leave unread before it is cut off (slow-client protection). */
  maxBufferedBytes: number;
  onSlowClient: () => void;
  /** Asked when the status is written (at the first token, the commit timeout, or an early error). */
  lateHeaders: LateHeaders;
}

const PING_MS = 15_000;

/**
 * Writes one stream by hand (not `@Sse()`), for every operation that streams: the HTTP
 * status is held until the first chunk (late commit), so any failure before the first
 * token is a real status an SDK can retry; after that a failure is one
 * `data: {"error":…}` event, then `[DONE]`. The worker's chunk choices are already in the
 * operation's wire shape; only the envelope is added here.
 */
export class SseResponder implements Responder {
  private committed = false;
  private ended = false;
  private readonly framePrefix: string;
  private readonly frameSuffix: string;
  private timer?: NodeJS.Timeout;

  constructor(
    private readonly res: Response,
    private readonly meta: ResponseMeta,
    private readonly opts: SseOptions,
  ) {
    // Every chunk shares id/object/created/model: build that JSON prefix once.
    this.framePrefix = `data: {"id":${JSON.stringify(meta.id)},"object":${JSON.stringify(opts.chunkObject)},"created":${meta.created},"model":${JSON.stringify(meta.model)},"choices":`;
    this.frameSuffix = opts.includeUsage ? ',"usage":null}\n\n' : '}\n\n';
    this.timer = setTimeout(() => this.onCommitTimeout(), opts.commitTimeoutMs);
  }

  get finished(): boolean {
    return this.ended;
  }

  /**
   * The response closed (finished, or the client went away): stop the commit and ping
   * timers, which would otherwise outlive the request and keep it in memory.
   */
  close(): void {
    this.stop();
  }

  onMessage(msg: RelayMessage): void {
    if (this.ended) {
      return;
    }
    switch (msg.t) {
      case 'start':
      case 'hb':
      case 'result':
      case 'part': // non-stream messages: a stream never receives them
        return;
      case 'chunk':
        this.writeChunk(msg);
        return;
      case 'done':
        this.commit();
        if (this.opts.includeUsage) {
          this.write(this.usageFrame(msg.usage));
        }
        this.finish();
        return;
      case 'error':
        this.fail(ApiError.fromBody(msg.status, msg.error, msg.retryAfterMs));
        return;
    }
  }

  /** Reports an error: as a status before commit, in-band after. */
  fail(err: ApiError): void {
    if (this.ended) {
      return;
    }
    if (!this.committed) {
      this.stop();
      setLateHeaders(this.res, this.opts.lateHeaders);
      sendApiError(this.res, err);
      return;
    }
    this.write(`data: ${JSON.stringify(err.body)}\n\n`);
    this.finish();
  }

  private writeChunk(msg: ChunkMessage): void {
    this.commit();
    markFirstToken(this.res);
    const fingerprint =
      msg.system_fingerprint === undefined ? '' : `,"system_fingerprint":${JSON.stringify(msg.system_fingerprint)}`;
    this.write(this.framePrefix + JSON.stringify(msg.choices) + fingerprint + this.frameSuffix);
  }

  private usageFrame(usage: Usage | null): string {
    return `${this.framePrefix}[],"usage":${JSON.stringify(usage)}}\n\n`;
  }

  private commit(): void {
    if (this.committed) {
      return;
    }
    this.committed = true;
    clearTimeout(this.timer);
    this.res.writeHead(200, {
      ...this.opts.lateHeaders(),
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache, no-transform',
      connection: 'keep-alive',
      'x-accel-buffering': 'no',
    });
    // No flushHeaders(): every commit is followed at once by a frame (the first token, the
    // usage or [DONE], or a ping), and Node sends the headers with it, in one socket write.
    this.res.socket?.setNoDelay(true);
  }

  private onCommitTimeout(): void {
    // Waited long enough for the first token: commit so proxies and SDK timeouts do not
    // fire, and keep the connection alive with SSE comments (ignored by every client).
    this.commit();
    this.write(': ping\n\n');
    this.timer = setInterval(() => this.write(': ping\n\n'), PING_MS);
  }

  private write(frame: string): void {
    if (this.ended || this.res.destroyed) {
      return;
    }
    this.res.write(frame);
    if (this.res.writableLength > this.opts.maxBufferedBytes) {
      // The client reads slower than the model writes; buffering more would let one
      // client exhaust the gateway's memory.
      this.ended = true;
      this.stop();
      this.opts.onSlowClient();
      this.res.destroy();
    }
  }

  private finish(): void {
    this.write('data: [DONE]\n\n');
    this.ended = true;
    this.stop();
    this.res.end();
  }

  private stop(): void {
    this.ended = true;
    clearTimeout(this.timer);
    clearInterval(this.timer);
  }
}
