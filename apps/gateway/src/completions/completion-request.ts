import { ApiError, COMPLETION_PARAMS, REQUEST_LIMITS, type ModelEntry } from '@app/common';
import { z } from 'zod';

/**
 * The OpenAI CompletionCreateParams, validated with their types, ranges and cross-field
 * rules. Unknown fields pass through untouched to the backend (vLLM and others accept
 * extensions such as `top_k`). `null` means "use the default", as in OpenAI's API.
 */
/**
 * `prompt`: a string, strings, token ids or token-id arrays. Checked by hand rather than by
 * a zod union: a 4 MiB prompt holds ~800 000 token ids, and zod would build an issue per
 * bad element for every branch of the union; this loop stops at the first bad element.
 * Returns the first problem (path below `prompt`, message), or undefined when valid.
 */
const PROMPT_SHAPE = 'expected a non-empty string, array of strings, array of token ids or array of token-id arrays';

type PromptIssue = { path: (string | number)[]; message: string };

function tokenIdsIssue(ids: readonly unknown[], path: (string | number)[]): PromptIssue | undefined {
  if (ids.length === 0) {
    return { path, message: 'must not be empty' };
  }
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i];
    if (typeof id !== 'number' || !Number.isInteger(id)) {
      return { path: [], message: PROMPT_SHAPE };
    }
    if (id < 0) {
      return { path: [...path, i], message: 'token ids must be ≥ 0' };
    }
  }
  return undefined;
}

export function promptIssue(prompt: unknown): PromptIssue | undefined {
  if (typeof prompt === 'string') {
    return prompt.length === 0 ? { path: [], message: 'must not be empty' } : undefined;
  }
  if (!Array.isArray(prompt) || prompt.length === 0) {
    return { path: [], message: PROMPT_SHAPE };
  }
  if (prompt.length > REQUEST_LIMITS.maxPrompts && typeof prompt[0] !== 'number') {
    return { path: [], message: `may contain at most ${REQUEST_LIMITS.maxPrompts} prompts` };
  }
  const first: unknown = prompt[0];
  if (typeof first === 'number') {
    return tokenIdsIssue(prompt, []);
  }
  if (typeof first === 'string') {
    return prompt.every((p) => typeof p === 'string') ? undefined : { path: [], message: PROMPT_SHAPE };
  }
  for (let i = 0; i < prompt.length; i++) {
    const p: unknown = prompt[i];
    const issue = Array.isArray(p) ? tokenIdsIssue(p, [i]) : { path: [], message: PROMPT_SHAPE };
    if (issue !== undefined) {
      return issue;
    }
  }
  return undefined;
}

/** How many prompts a valid `prompt` holds (a flat token-id array is one). */
export function promptCount(prompt: unknown): number {
  return Array.isArray(prompt) && typeof prompt[0] !== 'number' ? prompt.length : 1;
}

const promptSchema = z.any().superRefine((v: unknown, ctx) => {
  // null means OpenAI's default prompt (see parseCompletionRequest); absent is an error.
  const issue = v === null ? undefined : v === undefined ? { path: [], message: 'required' } : promptIssue(v);
  if (issue !== undefined) {
    ctx.addIssue({ code: 'custom', path: issue.path, message: issue.message });
  }
});
const num = (min: number, max: number) => z.number().min(min).max(max).nullish();
const int = (min: number, max: number) => z.number().int().min(min).max(max).nullish();

export const completionRequestSchema = z
  .looseObject({
    model: z.string().min(1, 'must not be empty'),
    prompt: promptSchema,
    suffix: z.string().max(REQUEST_LIMITS.maxSuffixChars).nullish(),
    max_tokens: int(0, Number.MAX_SAFE_INTEGER),
    temperature: num(0, 2),
    top_p: num(0, 1),
    n: int(1, 128),
    stream: z.boolean().nullish(),
    // Loose: newer options (e.g. include_obfuscation) must not break older gateways.
    stream_options: z.looseObject({ include_usage: z.boolean().nullish() }).nullish(),
    logprobs: int(0, 5),
    echo: z.boolean().nullish(),
    stop: z
      .union([
        z.string().max(REQUEST_LIMITS.maxStopChars),
        z.array(z.string().max(REQUEST_LIMITS.maxStopChars)).min(1).max(4, 'may contain at most 4 sequences'),
      ])
      .nullish(),
    presence_penalty: num(-2, 2),
    frequency_penalty: num(-2, 2),
    best_of: int(0, 20),
    logit_bias: z
      .record(z.string().regex(/^\d+$/, 'keys must be token ids'), z.number().min(-100).max(100))
      .refine((b) => Object.keys(b).length <= REQUEST_LIMITS.maxLogitBias, {
        message: `may hold at most ${REQUEST_LIMITS.maxLogitBias} entries`,
      })
      .nullish(),
    // int64, as OpenAI specifies (JSON numbers past 2^53 already lost precision when parsed).
    // (z.int() would stop at 2^53: zod's int is a safe integer.)
    seed: z
      .number()
      .refine(Number.isInteger, 'expected an integer')
      .min(-(2 ** 63))
      .max(2 ** 63 - 1)
      .nullish(),
    user: z.string().max(REQUEST_LIMITS.maxUserChars).nullish(),
    /** Aqueduct's own end-user id: kept for the usage log, never forwarded upstream. */
    user_id: z.union([z.string().max(REQUEST_LIMITS.maxUserChars), z.number()]).optional(),
  })
  .superRefine((r, ctx) => {
    const n = r.n ?? 1;
    // Each prompt is generated best_of times (n when best_of is unset).
    const choices = promptCount(r.prompt) * Math.max(n, r.best_of ?? 1);
    if (choices > REQUEST_LIMITS.maxChoices) {
      const field = r.best_of != null && r.best_of > n ? 'best_of' : n > 1 ? 'n' : 'prompt';
      ctx.addIssue({
        code: 'custom',
        path: [field],
        message: `len(prompt) × ${field === 'prompt' ? 'n' : field} is ${choices}, above the limit of ${REQUEST_LIMITS.maxChoices} completions per request`,
      });
    }
    if (r.best_of != null && r.best_of < n) {
      ctx.addIssue({ code: 'custom', path: ['best_of'], message: `must be greater than or equal to n (${n})` });
    }
    if (r.stream === true && r.best_of != null && r.best_of > 1) {
      ctx.addIssue({ code: 'custom', path: ['best_of'], message: 'results cannot be streamed when best_of > 1' });
    }
    if (r.stream_options != null && r.stream !== true) {
      ctx.addIssue({
        code: 'custom',
        path: ['stream_options'],
        message: "the 'stream_options' parameter is only allowed when 'stream' is enabled",
      });
    }
  });

export type CompletionRequest = z.infer<typeof completionRequestSchema>;

/** OpenAI's documented default when `prompt` is null. */
const DEFAULT_PROMPT = '<|endoftext|>';

/** Fields the gateway owns and never forwards. */
const GATEWAY_FIELDS = new Set(['model', 'stream', 'stream_options', 'user_id']);
/** The OpenAI parameters a backend receives; other fields only when a deployment allows them. */
const OPENAI_FIELDS: ReadonlySet<string> = new Set(COMPLETION_PARAMS.filter((k) => !GATEWAY_FIELDS.has(k)));

export interface ParsedCompletion {
  model: string;
  stream: boolean;
  includeUsage: boolean;
  userId: string | null;
  /**
   * What the worker forwards: the OpenAI parameters of the client's body, plus the
   * extensions its model's deployments allow (`extra_body_allowed`, see {@link forModel}).
   */
  params: Record<string, unknown>;
  /** Extension fields of the body, kept until the model is known. */
  extensions: Record<string, unknown>;
}

export function parseCompletionRequest(body: unknown): ParsedCompletion {
  const result = completionRequestSchema.safeParse(body);
  if (!result.success) {
    throw toApiError(result.error, body as Record<string, unknown>);
  }
  const r = result.data;
  const params: Record<string, unknown> = {};
  const extensions: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(r)) {
    if (OPENAI_FIELDS.has(k)) {
      params[k] = v;
    } else if (!GATEWAY_FIELDS.has(k)) {
      extensions[k] = v;
    }
  }
  params.prompt ??= DEFAULT_PROMPT;
  return {
    model: r.model,
    stream: r.stream === true,
    includeUsage: r.stream === true && r.stream_options?.include_usage === true,
    userId: r.user_id === undefined ? null : String(r.user_id),
    params,
    extensions,
  };
}

/**
 * The model-dependent checks and the job's parameters: `max_tokens` within the model's
 * `max_output_tokens`, and only the extensions some deployment of the model allows, so a
 * token holder cannot reach an upstream's private surface (nor smuggle `access_token`).
 */
export function forModel(request: ParsedCompletion, model: ModelEntry): Record<string, unknown> {
  const maxTokens = request.params.max_tokens;
  if (model.maxOutputTokens !== undefined && typeof maxTokens === 'number' && maxTokens > model.maxOutputTokens) {
    throw ApiError.invalid(
      `Invalid value for 'max_tokens': ${maxTokens} is above the maximum of ${model.maxOutputTokens} output tokens for model \`${model.name}\`.`,
      'max_tokens',
    );
  }
  const params = { ...request.params };
  for (const [k, v] of Object.entries(request.extensions)) {
    if (model.extraBodyAllowed.has(k)) {
      params[k] = v;
    }
  }
  return params;
}

function toApiError(error: z.ZodError, body: Record<string, unknown>): ApiError {
  const issue = error.issues[0];
  if (issue === undefined) {
    return ApiError.invalid('Invalid request body.');
  }
  const param = typeof issue.path[0] === 'string' ? issue.path[0] : null;
  const where = issue.path
    .map((p) => (typeof p === 'number' ? `[${p}]` : `.${String(p)}`))
    .join('')
    .slice(1);
  if (param === null) {
    return ApiError.invalid(`Invalid request: ${issue.message}.`);
  }
  if (body[param] === undefined) {
    return ApiError.invalid(`Missing required parameter: '${param}'.`, param);
  }
  const detail = issue.code === 'invalid_union' ? describeUnion(param) : issue.message;
  return ApiError.invalid(`Invalid value for '${where}': ${detail}.`, param);
}

function describeUnion(param: string): string {
  switch (param) {
    case 'prompt':
      return 'expected a non-empty string, array of strings, array of token ids or array of token-id arrays';
    case 'stop':
      return 'expected a string or an array of 1 to 4 strings';
    default:
      return 'unsupported type';
  }
}
