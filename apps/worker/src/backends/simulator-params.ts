import { BackendError } from './backend.error';

/**
 * The completion parameters the simulator honours, checked and defaulted. The gateway
 * validates requests too, but the simulator is also driven directly by tests and load
 * generators, so it refuses nonsense itself instead of producing it.
 */
export interface SimParams {
  /** Each prompt as text; a tokenized prompt becomes `t<id>` words (`[1, 2]` → `"t1 t2"`). */
  prompts: string[];
  n: number;
  maxTokens: number;
  echo: boolean;
  stop: string[];
  /** Alternatives per position, or null when logprobs were not asked for. */
  logprobs: number | null;
  seed: number | null;
}

/** The OpenAI default when `prompt` is absent. */
const DEFAULT_PROMPT = '<|endoftext|>';

export function parseSimParams(params: Record<string, unknown>): SimParams {
  // `suffix` is accepted and, as OpenAI does for most models, not part of the text.
  return {
    prompts: parsePrompts(params.prompt),
    n: int(params.n, 'n', 1, 1, 128),
    maxTokens: int(params.max_tokens, 'max_tokens', 16, 0, Number.MAX_SAFE_INTEGER),
    echo: bool(params.echo, 'echo'),
    stop: parseStop(params.stop),
    logprobs:
      params.logprobs === undefined || params.logprobs === null ? null : int(params.logprobs, 'logprobs', 0, 0, 5),
    seed: params.seed === undefined || params.seed === null ? null : int(params.seed, 'seed', 0, -(2 ** 63), 2 ** 63),
  };
}

function parsePrompts(prompt: unknown): string[] {
  if (prompt === undefined || prompt === null) {
    return [DEFAULT_PROMPT];
  }
  if (typeof prompt === 'string') {
    return [prompt];
  }
  if (Array.isArray(prompt) && prompt.length > 0) {
    if (prompt.every((p) => typeof p === 'string')) {
      return prompt;
    }
    if (prompt.every(isTokenId)) {
      return [tokenText(prompt)]; // int[] is one tokenized prompt, not a batch
    }
    if (prompt.every((p) => Array.isArray(p) && p.length > 0 && p.every(isTokenId))) {
      return prompt.map((ids: number[]) => tokenText(ids));
    }
  }
  throw invalid('prompt must be a string, an array of strings, an array of token ids or an array of those', 'prompt');
}

export function parseStop(stop: unknown): string[] {
  if (stop === undefined || stop === null) {
    return [];
  }
  const list = typeof stop === 'string' ? [stop] : stop;
  if (!Array.isArray(list) || list.length > 4 || !list.every((s) => typeof s === 'string')) {
    throw invalid('stop must be a string or an array of at most 4 strings', 'stop');
  }
  // An empty stop string would end every completion before it starts; it means "no stop".
  return list.filter((s) => s !== '');
}

export function isTokenId(v: unknown): v is number {
  return typeof v === 'number' && Number.isInteger(v) && v >= 0;
}

export function tokenText(ids: number[]): string {
  return ids.map((k) => `t${k}`).join(' ');
}

export function int(v: unknown, param: string, fallback: number, min: number, max: number): number {
  if (v === undefined || v === null) {
    return fallback;
  }
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    throw invalid(`${param} must be an integer between ${min} and ${max}`, param);
  }
  return v;
}

export function bool(v: unknown, param: string): boolean {
  if (v === undefined || v === null) {
    return false;
  }
  if (typeof v !== 'boolean') {
    throw invalid(`${param} must be a boolean`, param);
  }
  return v;
}

export function invalid(message: string, param: string): BackendError {
  return new BackendError(400, message, 'invalid_request_error', false, param);
}
