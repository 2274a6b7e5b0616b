import type { EmbeddingObject } from '@app/common';
import type { BackendRequest, BackendResult } from './llm-backend';
import type { SimulatorClock } from './simulator-clock';
import { int, invalid, isTokenId, tokenText } from './simulator-params';
import { prng } from './simulator-text';

/**
 * The simulator's embeddings: for each input a deterministic unit-length vector seeded by
 * a hash of the model name and the input's text, so the same input always gets the same
 * vector and different inputs (almost surely) different ones. Usage counts words, token
 * ids one each, as the completion simulator counts prompts.
 */

/** The simulated model's native size; `dimensions` may ask for fewer, as OpenAI's v3 models allow. */
export const SIM_EMBEDDING_DIMENSIONS = 256;
/** OpenAI's limit on inputs per request; the gateway enforces it too. */
const MAX_INPUTS = 2048;

export async function simulateEmbeddings(clock: SimulatorClock, req: BackendRequest): Promise<BackendResult> {
  const start = clock.now();
  req.signal.throwIfAborted();
  const { params } = req;
  const inputs = parseInputs(params.input);
  const dimensions = int(params.dimensions, 'dimensions', SIM_EMBEDDING_DIMENSIONS, 1, SIM_EMBEDDING_DIMENSIONS);
  const base64 = parseEncoding(params.encoding_format);
  const pace = clock.pacer(req.signal);
  const output: EmbeddingObject[] = [];
  let tokens = 0;
  for (const [index, text] of inputs.entries()) {
    const vector = embed(req.deployment.upstreamModel, text, dimensions);
    output.push({ object: 'embedding', index, embedding: base64 ? toBase64(vector) : Array.from(vector) });
    tokens += text.split(/\s+/).filter((w) => w !== '').length;
    // A vector costs about a sampled token's work per few dimensions: 2048 of them must not hold the loop.
    await pace.work(1 + (dimensions >> 5));
  }
  // The whole batch is one forward pass for a real server: one time to first token, no per-token latency.
  await clock.waitUntil(req, start + req.deployment.ttftMs);
  return { output, usage: { prompt_tokens: tokens, completion_tokens: 0, total_tokens: tokens } };
}

/**
 * Uniform values from the seeded generator, truncated, then scaled to unit L2 norm (as
 * OpenAI normalises a shortened embedding). Float32, so that the float and the base64
 * encodings of one input are exactly the same numbers.
 */
function embed(model: string, text: string, dimensions: number): Float32Array {
  const rng = prng(JSON.stringify([model, text]));
  const raw = new Float64Array(dimensions);
  let sumSquares = 0;
  for (let i = 0; i < dimensions; i++) {
    const x = rng() * 2 - 1;
    raw[i] = x;
    sumSquares += x * x;
  }
  // A zero vector is impossible in practice (every value would have to be exactly 0); guard anyway.
  const norm = Math.sqrt(sumSquares) || 1;
  return Float32Array.from(raw, (x) => x / norm);
}

/** Little-endian float32, what the OpenAI SDKs decode (Node and browsers run little-endian anyway, but say so). */
function toBase64(vector: Float32Array): string {
  const bytes = Buffer.alloc(vector.length * 4);
  vector.forEach((x, i) => bytes.writeFloatLE(x, i * 4));
  return bytes.toString('base64');
}

/** Each input as text; token ids become `t<id>` words, as in completion prompts. */
function parseInputs(input: unknown): string[] {
  const ok = (list: string[]): string[] => {
    if (list.length > MAX_INPUTS) {
      throw invalid(`input must hold at most ${MAX_INPUTS} items`, 'input');
    }
    return list;
  };
  if (typeof input === 'string' && input !== '') {
    return [input];
  }
  if (Array.isArray(input) && input.length > 0) {
    if (input.every(isNonEmptyString)) {
      return ok(input);
    }
    if (input.every(isTokenId)) {
      return [tokenText(input)]; // int[] is one tokenized input, not a batch
    }
    if (input.every((ids) => Array.isArray(ids) && ids.length > 0 && ids.every(isTokenId))) {
      return ok(input.map((ids: number[]) => tokenText(ids)));
    }
  }
  throw invalid(
    'input must be a non-empty string, an array of them, an array of token ids or an array of those',
    'input',
  );
}

function parseEncoding(format: unknown): boolean {
  if (format === undefined || format === null || format === 'float') {
    return false;
  }
  if (format === 'base64') {
    return true;
  }
  throw invalid('encoding_format must be "float" or "base64"', 'encoding_format');
}

function isNonEmptyString(v: unknown): v is string {
  return typeof v === 'string' && v !== '';
}
