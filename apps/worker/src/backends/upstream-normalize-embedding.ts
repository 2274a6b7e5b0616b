import type { EmbeddingObject } from '@app/common';
import type { BackendResult } from './llm-backend';
import { fromErrorFrame, isRecord, upstreamInvalid } from './upstream-errors';
import { parseUsage } from './upstream-normalize';

/**
 * An upstream `/embeddings` response reduced to OpenAI's `data` items and usage. The
 * vectors are checked (an SDK that gets a non-number would fail far from here) but never
 * re-encoded: a float array or a base64 string goes out exactly as it came in.
 */
export function normaliseEmbeddings(body: unknown): BackendResult & { output: EmbeddingObject[] } {
  if (!isRecord(body)) {
    throw upstreamInvalid('the body is not a JSON object');
  }
  if (body.error !== undefined && body.error !== null) {
    throw fromErrorFrame(body.error);
  }
  if (!Array.isArray(body.data)) {
    throw upstreamInvalid('no data array');
  }
  const output = body.data.map(embeddingObject);
  const usage = parseUsage(body.usage, upstreamInvalid);
  return {
    output,
    // Embeddings generate nothing; a server that reports completion tokens is not billed for them.
    usage:
      usage === null
        ? null
        : { prompt_tokens: usage.prompt_tokens, completion_tokens: 0, total_tokens: usage.total_tokens },
  };
}

function embeddingObject(raw: unknown): EmbeddingObject {
  if (!isRecord(raw)) {
    throw upstreamInvalid('an embedding is not an object');
  }
  const { index, embedding } = raw;
  if (typeof index !== 'number' || !Number.isInteger(index) || index < 0) {
    throw upstreamInvalid('an embedding has no valid index');
  }
  if (typeof embedding === 'string') {
    return { object: 'embedding', index, embedding };
  }
  if (!Array.isArray(embedding) || !embedding.every(isFiniteNumber)) {
    throw upstreamInvalid('an embedding is neither a number array nor a base64 string');
  }
  return { object: 'embedding', index, embedding };
}

function isFiniteNumber(v: unknown): v is number {
  return typeof v === 'number' && Number.isFinite(v);
}
