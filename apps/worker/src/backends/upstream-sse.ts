import { createParser, type EventSourceMessage } from 'eventsource-parser';
import { upstreamProtocolError, upstreamTerminated } from './upstream-errors';

/**
 * Cap on one SSE frame. eventsource-parser counts UTF-16 characters, so this is 1 Mi
 * characters (at least 1 MiB of UTF-8): a runaway frame must not grow worker memory
 * without bound, and no legitimate completion chunk comes near it.
 */
export const MAX_FRAME_CHARS = 1024 * 1024;

/** Reads the next body chunk, or null at the end of the body. */
export type ReadChunk = () => Promise<Uint8Array | null>;

/**
 * Yields the `data` of each upstream SSE message up to the exact `[DONE]` sentinel and
 * returns after it; throws if the body ends before it (truncation must never look like a
 * finished completion). Comments and named events other than `error` are skipped, as the
 * OpenAI SDKs do; an `event: error` message is yielded so the caller treats it as an error.
 */
export async function* sseMessages(read: ReadChunk): AsyncGenerator<EventSourceMessage> {
  // Streaming decode: a multi-byte UTF-8 character may be split across TCP reads.
  const decoder = new TextDecoder();
  const ready: EventSourceMessage[] = [];
  let overflow = false;
  const parser = createParser({
    maxBufferSize: MAX_FRAME_CHARS,
    onEvent: (message) => ready.push(message),
    onError: (err) => {
      // Unknown fields and bad `retry:` lines are harmless; only the size cap matters.
      overflow ||= err.type === 'max-buffer-size-exceeded';
    },
  });

  for (let bytes = await read(); bytes !== null; bytes = await read()) {
    parser.feed(decoder.decode(bytes, { stream: true }));
    if (overflow) {
      throw upstreamProtocolError('a frame exceeds 1 MiB');
    }
    // Drain the batch before yielding: the parser calls back synchronously inside feed().
    const batch = ready.splice(0);
    for (const message of batch) {
      if (message.data.length > MAX_FRAME_CHARS) {
        // A whole frame delivered in one read never sits in the parser's buffer.
        throw upstreamProtocolError('a frame exceeds 1 MiB');
      }
      if (message.event !== undefined && message.event !== 'message' && message.event !== 'error') {
        continue;
      }
      if (message.data === '[DONE]') {
        return;
      }
      yield message;
    }
  }
  throw upstreamTerminated();
}
