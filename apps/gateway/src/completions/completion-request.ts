import { ApiError } from '@app/common';
import { z } from 'zod';

/**
 * The OpenAI CompletionCreateParams, validated with their types, ranges and cross-field
 * rules. Unknown fields pass through untouched to the backend (vLLM and others accept
 * extensions such as `top_k`). `null` means "use the default", as in OpenAI's API.
 */
const tokenIds = z.array(z.number().int().min(0, 'token ids must be ≥ 0')).min(1, 'must not be empty');
const promptSchema = z.union([
  z.string().min(1, 'must not be empty'),
  z.array(z.string()).min(1, 'must not be empty'),
  tokenIds,
  z.array(tokenIds).min(1, 'must not be empty'),
]);
const num = (min: number, max: number) => z.number().min(min).max(max).nullish();
const int = (min: number, max: number) => z.number().int().min(min).max(max).nullish();

export const completionRequestSchema = z
  .looseObject({
    model: z.string().min(1, 'must not be empty'),
    // null means OpenAI's default prompt (see parseCompletionRequest).
    prompt: promptSchema.nullable(),
    suffix: z.string().nullish(),
    max_tokens: int(0, Number.MAX_SAFE_INTEGER),
    temperature: num(0, 2),
    top_p: num(0, 1),
    n: int(1, 128),
    stream: z.boolean().nullish(),
    // Loose: newer options (e.g. include_obfuscation) must not break older gateways.
    stream_options: z.looseObject({ include_usage: z.boolean().nullish() }).nullish(),
    logprobs: int(0, 5),
    echo: z.boolean().nullish(),
    stop: z.union([z.string(), z.array(z.string()).min(1).max(4, 'may contain at most 4 sequences')]).nullish(),
    presence_penalty: num(-2, 2),
    frequency_penalty: num(-2, 2),
    best_of: int(0, 20),
    logit_bias: z.record(z.string().regex(/^\d+$/, 'keys must be token ids'), z.number().min(-100).max(100)).nullish(),
    // int64, as OpenAI specifies (JSON numbers past 2^53 already lost precision when parsed).
    // (z.int() would stop at 2^53: zod's int is a safe integer.)
    seed: z
      .number()
      .refine(Number.isInteger, 'expected an integer')
      .min(-(2 ** 63))
      .max(2 ** 63 - 1)
      .nullish(),
    user: z.string().nullish(),
    /** Aqueduct's own end-user id: kept for the usage log, never forwarded upstream. */
    user_id: z.union([z.string(), z.number()]).optional(),
  })
  .superRefine((r, ctx) => {
    const n = r.n ?? 1;
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

/** Fields the gateway owns; everything else is forwarded to the backend as sent. */
const GATEWAY_FIELDS = new Set(['model', 'stream', 'stream_options', 'user_id']);

export interface ParsedCompletion {
  model: string;
  stream: boolean;
  includeUsage: boolean;
  userId: string | null;
  /** What the worker forwards: the client's body minus the gateway-owned fields. */
  params: Record<string, unknown>;
}

export function parseCompletionRequest(body: unknown): ParsedCompletion {
  const result = completionRequestSchema.safeParse(body);
  if (!result.success) {
    throw toApiError(result.error, body as Record<string, unknown>);
  }
  const r = result.data;
  const params: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(r)) {
    if (!GATEWAY_FIELDS.has(k)) {
      params[k] = v;
    }
  }
  params.prompt ??= DEFAULT_PROMPT;
  return {
    model: r.model,
    stream: r.stream === true,
    includeUsage: r.stream === true && r.stream_options?.include_usage === true,
    userId: r.user_id === undefined ? null : String(r.user_id),
    params,
  };
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
  if (issue.code === 'invalid_type' && body[param] === undefined) {
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
