import { z } from 'zod';
import type { ChoiceDelta } from '../contracts/openai';
import { REQUEST_LIMITS } from '../contracts/request-limits';
import { estimateCompletionTokens, estimatePromptTokens, type OutputCount } from '../usage/usage-estimate';
import { type OperationSpec, type ParsedRequest, choicesEnvelope, parsedRequest, validationError } from './operation';

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

export type PromptIssue = { path: (string | number)[]; message: string };

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

/** Also embeddings' `input` (`items` names the elements in messages, `emptyStrings` whether "" may appear in arrays). */
export function promptIssue(prompt: unknown, items = 'prompts', emptyStrings = true): PromptIssue | undefined {
  if (typeof prompt === 'string') {
    return prompt.length === 0 ? { path: [], message: 'must not be empty' } : undefined;
  }
  if (!Array.isArray(prompt) || prompt.length === 0) {
    return { path: [], message: PROMPT_SHAPE };
  }
  if (prompt.length > REQUEST_LIMITS.maxPrompts && typeof prompt[0] !== 'number') {
    return { path: [], message: `may contain at most ${REQUEST_LIMITS.maxPrompts} ${items}` };
  }
  const first: unknown = prompt[0];
  if (typeof first === 'number') {
    return tokenIdsIssue(prompt, []);
  }
  if (typeof first === 'string') {
    for (let i = 0; i < prompt.length; i++) {
      const p: unknown = prompt[i];
      if (typeof p !== 'string') {
        return { path: [], message: PROMPT_SHAPE };
      }
      if (!emptyStrings && p === '') {
        return { path: [i], message: 'must not be empty' };
      }
    }
    return undefined;
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
export const num = (min: number, max: number) => z.number().min(min).max(max).nullish();
export const int = (min: number, max: number) => z.number().int().min(min).max(max).nullish();

/** The fields completions and chat share, validated alike. */
export const stopSchema = z
  .union(
    [
      z.string().max(REQUEST_LIMITS.maxStopChars),
      z.array(z.string().max(REQUEST_LIMITS.maxStopChars)).min(1).max(4, 'may contain at most 4 sequences'),
    ],
    { error: 'expected a string or an array of 1 to 4 strings' },
  )
  .nullish();
export const logitBiasSchema = z
  .record(z.string().regex(/^\d+$/, 'keys must be token ids'), z.number().min(-100).max(100))
  .refine((b) => Object.keys(b).length <= REQUEST_LIMITS.maxLogitBias, {
    message: `may hold at most ${REQUEST_LIMITS.maxLogitBias} entries`,
  })
  .nullish();
// int64, as OpenAI specifies (JSON numbers past 2^53 already lost precision when parsed).
// (z.int() would stop at 2^53: zod's int is a safe integer.)
export const seedSchema = z
  .number()
  .refine(Number.isInteger, 'expected an integer')
  .min(-(2 ** 63))
  .max(2 ** 63 - 1)
  .nullish();
export const userSchema = z.string().max(REQUEST_LIMITS.maxUserChars).nullish();
/** Aqueduct's own end-user id: kept for the usage log, never forwarded upstream. */
export const userIdSchema = z.union([z.string().max(REQUEST_LIMITS.maxUserChars), z.number()]).optional();
// Loose: newer options (e.g. include_obfuscation) must not break older gateways.
export const streamOptionsSchema = z.looseObject({ include_usage: z.boolean().nullish() }).nullish();

/** OpenAI refuses stream_options without a stream; so do we, for every operation that streams. */
export function checkStreamOptions(r: { stream?: boolean | null; stream_options?: unknown }, ctx: z.RefinementCtx) {
  if (r.stream_options != null && r.stream !== true) {
    ctx.addIssue({
      code: 'custom',
      path: ['stream_options'],
      message: "the 'stream_options' parameter is only allowed when 'stream' is enabled",
    });
  }
}

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
    stream_options: streamOptionsSchema,
    logprobs: int(0, 5),
    echo: z.boolean().nullish(),
    stop: stopSchema,
    presence_penalty: num(-2, 2),
    frequency_penalty: num(-2, 2),
    best_of: int(0, 20),
    logit_bias: logitBiasSchema,
    seed: seedSchema,
    user: userSchema,
    user_id: userIdSchema,
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
    checkStreamOptions(r, ctx);
  });

export type CompletionRequest = z.infer<typeof completionRequestSchema>;

/** OpenAI's documented default when `prompt` is null. */
const DEFAULT_PROMPT = '<|endoftext|>';

function countText(count: OutputCount, items: readonly unknown[]): void {
  for (const c of items as readonly ChoiceDelta[]) {
    count.pieces += c.text === '' ? 0 : 1;
    count.chars += c.text.length;
  }
}

/** `POST /v1/completions`: OpenAI text completions. */
export const COMPLETION: OperationSpec = {
  name: 'completion',
  route: 'completions',
  endpoint: '/v1/completions',
  idPrefix: 'cmpl-',
  chunkObject: 'text_completion',
  parse(body: unknown): ParsedRequest {
    const result = completionRequestSchema.safeParse(body);
    if (!result.success) {
      throw validationError(result.error, body);
    }
    const parsed = parsedRequest('completion', result.data, result.data.stream === true);
    parsed.params.prompt ??= DEFAULT_PROMPT;
    return parsed;
  },
  maxTokens: (params) => (typeof params.max_tokens === 'number' ? params.max_tokens : undefined),
  promptTokens: (params) => estimatePromptTokens(params.prompt),
  countOutput: countText,
  completionTokens: estimateCompletionTokens,
  resultEnvelope: (meta, usage, systemFingerprint) =>
    choicesEnvelope('text_completion', meta, usage, systemFingerprint),
};
