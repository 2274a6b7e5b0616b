import type { OperationName } from './openai';

/**
 * The request fields of each OpenAI operation (CompletionCreateParams,
 * ChatCompletionCreateParams, EmbeddingCreateParams). Only these, plus a deployment's
 * `extra_body_allowed`, ever reach an upstream: anything else a client sends (a body
 * `access_token`, a server's private extension) is dropped, so a token holder cannot reach
 * parts of an upstream's surface the operator did not open. Shared by the gateway (what it
 * lets into a job) and the workers (what they forward).
 */
export const COMPLETION_PARAMS = [
  'model',
  'prompt',
  'suffix',
  'max_tokens',
  'temperature',
  'top_p',
  'n',
  'stream',
  'stream_options',
  'logprobs',
  'echo',
  'stop',
  'presence_penalty',
  'frequency_penalty',
  'best_of',
  'logit_bias',
  'seed',
  'user',
] as const;

export const CHAT_PARAMS = [
  'model',
  'messages',
  'audio',
  'frequency_penalty',
  'function_call',
  'functions',
  'logit_bias',
  'logprobs',
  'max_completion_tokens',
  'max_tokens',
  'metadata',
  'modalities',
  'n',
  'parallel_tool_calls',
  'prediction',
  'presence_penalty',
  'prompt_cache_key',
  'reasoning_effort',
  'response_format',
  'safety_identifier',
  'seed',
  'service_tier',
  'stop',
  'store',
  'stream',
  'stream_options',
  'temperature',
  'tool_choice',
  'tools',
  'top_logprobs',
  'top_p',
  'user',
  'verbosity',
  'web_search_options',
] as const;

export const EMBEDDING_PARAMS = ['model', 'input', 'dimensions', 'encoding_format', 'user'] as const;

export const OPERATION_PARAMS: Readonly<Record<OperationName, readonly string[]>> = {
  completion: COMPLETION_PARAMS,
  chat: CHAT_PARAMS,
  embedding: EMBEDDING_PARAMS,
};

const KNOWN: Readonly<Record<OperationName, ReadonlySet<string>>> = {
  completion: new Set(COMPLETION_PARAMS),
  chat: new Set(CHAT_PARAMS),
  embedding: new Set(EMBEDDING_PARAMS),
};

/** Whether `name` is a request field of the operation. */
export function isOperationParam(op: OperationName, name: string): boolean {
  return KNOWN[op].has(name);
}

/**
 * The fields of `params` that may go upstream: the operation's own and the `allowed` extras.
 * Own enumerable keys only, so a `__proto__` key in parsed JSON cannot smuggle anything.
 */
export function pickUpstreamParams(
  op: OperationName,
  params: Record<string, unknown>,
  allowed: ReadonlySet<string> | readonly string[],
): Record<string, unknown> {
  const known = KNOWN[op];
  // Allow-lists are a handful of names: a linear scan of an array costs less than a Set.
  const extra = (name: string) => ('has' in allowed ? allowed.has(name) : allowed.includes(name));
  const out: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(params)) {
    if (known.has(name) || extra(name)) {
      out[name] = value;
    }
  }
  return out;
}
