/**
 * The request fields of OpenAI's CompletionCreateParams (`POST /v1/completions`). Only
 * these, plus a deployment's `extra_body_allowed`, ever reach an upstream: anything else a
 * client sends (a body `access_token`, a server's private extension) is dropped, so a
 * token holder cannot reach parts of an upstream's surface the operator did not open.
 * Shared by the gateway (what it lets into a job) and the workers (what they forward).
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

export type CompletionParam = (typeof COMPLETION_PARAMS)[number];

const KNOWN: ReadonlySet<string> = new Set(COMPLETION_PARAMS);

export function isCompletionParam(name: string): name is CompletionParam {
  return KNOWN.has(name);
}

/**
 * The fields of `params` that may go upstream: the OpenAI ones and the `allowed` extras.
 * Own enumerable keys only, so a `__proto__` key in parsed JSON cannot smuggle anything.
 */
export function pickCompletionParams(
  params: Record<string, unknown>,
  allowed: ReadonlySet<string> | readonly string[],
): Record<string, unknown> {
  // Allow-lists are a handful of names: a linear scan of an array costs less than a Set.
  const extra = (name: string) => ('has' in allowed ? allowed.has(name) : allowed.includes(name));
  const out: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(params)) {
    if (KNOWN.has(name) || extra(name)) {
      out[name] = value;
    }
  }
  return out;
}
