import { parseSse, type SseBody } from './contract-helpers';

/**
 * Raw streaming HTTP against a gateway, for tests that act while a response is still
 * arriving (abort it, pause it, kill a process under it). `raw()` in contract-helpers is
 * the whole-body counterpart.
 */

/** POSTs `body` as JSON to /v1/completions with a bearer key; the body is left to the caller to read or abort. */
export function postCompletion(base: string, key: string, body: unknown, signal?: AbortSignal): Promise<Response> {
  return fetch(`${base}/v1/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
    signal,
  });
}

/** One SSE `data:` payload and when it arrived, for timing assertions. */
export interface TimedEvent {
  at: number;
  data: string;
}

/** The `data:` payloads of an SSE body as they arrive, one batch per network read, so a reader can stop between reads. */
export async function* readSse(res: Response): AsyncGenerator<string[]> {
  const decoder = new TextDecoder();
  let buffer = '';
  for await (const bytes of res.body ?? []) {
    buffer += decoder.decode(bytes as Uint8Array, { stream: true });
    const frames = buffer.split('\n\n');
    buffer = frames.pop() ?? '';
    yield frames.filter((f) => f.startsWith('data: ')).map((f) => f.slice(6));
  }
}

/** Appends every `data:` payload of an SSE body to `events`, stamped on arrival, until the body ends. */
export async function recordSse(res: Response, events: TimedEvent[]): Promise<void> {
  for await (const batch of readSse(res)) {
    for (const data of batch) {
      events.push({ at: Date.now(), data });
    }
  }
}

/** A completion request in flight, observable while it streams. */
export interface LiveStream {
  /** The HTTP status, once the headers arrived. */
  status?: number;
  /** `data:` payloads with their arrival time. */
  events: TimedEvent[];
  /** Settles when the body ends or fails (never rejects). */
  finished: Promise<void>;
  /** When the body ended or failed. */
  endedAt?: number;
  /** Aborts the request, as a client that goes away. */
  abort: () => void;
}

/**
 * Starts a completion request without waiting for it, so a test can act mid-stream; `pauseMs`
 * leaves the body unread that long after the headers (a slow reader).
 */
export function openStream(base: string, key: string, body: Record<string, unknown>, pauseMs = 0): LiveStream {
  const controller = new AbortController();
  const live: LiveStream = { events: [], finished: Promise.resolve(), abort: () => controller.abort() };
  live.finished = (async () => {
    try {
      const res = await postCompletion(base, key, body, controller.signal);
      live.status = res.status;
      if (pauseMs > 0) {
        await new Promise((r) => setTimeout(r, pauseMs));
      }
      await recordSse(res, live.events);
    } catch {
      // aborted by the test or cut by a fault: judged by the assertions, from what arrived
    }
    live.endedAt = Date.now();
  })();
  return live;
}

/** What a stream received, parsed as an SSE body (so `parseSse`'s checks apply to timed events too). */
export function sseOf(stream: { events: TimedEvent[] }): SseBody {
  return parseSse(stream.events.map((e) => `data: ${e.data}\n\n`).join(''));
}
