import { z } from 'zod';
import { REQUEST_LIMITS } from '../contracts/request-limits';
import { estimatePromptTokens, type OutputCount } from '../usage/usage-estimate';
import { promptIssue, userIdSchema, userSchema } from './completion.operation';
import { type OperationSpec, type ParsedRequest, parsedRequest, validationError } from './operation';

/**
 * The OpenAI EmbeddingCreateParams. `input` has the shapes of a completion prompt (a
 * string, strings, token ids or token-id arrays) and is checked by the same single pass;
 * like OpenAI, no input may be an empty string.
 */
const inputSchema = z.any().superRefine((v: unknown, ctx) => {
  const issue = v === undefined ? { path: [], message: 'required' } : promptIssue(v, 'inputs', false);
  if (issue !== undefined) {
    ctx.addIssue({ code: 'custom', path: issue.path, message: issue.message });
  }
});

export const embeddingRequestSchema = z.looseObject({
  model: z.string().min(1, 'must not be empty'),
  input: inputSchema,
  encoding_format: z.enum(['float', 'base64'], { error: "expected 'float' or 'base64'" }).nullish(),
  dimensions: z.number().int().min(1).max(REQUEST_LIMITS.maxEmbeddingDimensions).nullish(),
  user: userSchema,
  user_id: userIdSchema,
});

/** An embedding result counts one item per vector: enough to tell "produced" from "nothing". */
function countVectors(count: OutputCount, items: readonly unknown[]): void {
  count.pieces += items.length;
  count.chars += items.length;
}

/** `POST /v1/embeddings`: OpenAI embeddings. Never streamed, and no output tokens. */
export const EMBEDDING: OperationSpec = {
  name: 'embedding',
  route: 'embeddings',
  endpoint: '/v1/embeddings',
  idPrefix: '',
  parse(body: unknown): ParsedRequest {
    const result = embeddingRequestSchema.safeParse(body);
    if (!result.success) {
      throw validationError(result.error, body);
    }
    return parsedRequest('embedding', result.data, false);
  },
  maxTokens: () => undefined,
  promptTokens: (params) => estimatePromptTokens(params.input),
  countOutput: countVectors,
  completionTokens: () => 0,
  resultEnvelope(meta, usage) {
    const prompt = usage?.prompt_tokens ?? 0;
    return [
      `{"object":"list","data":`,
      `,"model":${JSON.stringify(meta.model)},"usage":{"prompt_tokens":${prompt},"total_tokens":${usage?.total_tokens ?? prompt}}}`,
    ];
  },
};
