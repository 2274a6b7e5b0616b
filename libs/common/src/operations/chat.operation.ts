import { z } from 'zod';
import type { ChatChoice, ChatChunkChoice, ChatToolCall, ChatToolCallDelta } from '../contracts/openai';
import { REQUEST_LIMITS } from '../contracts/request-limits';
import { estimateCompletionTokens, type OutputCount } from '../usage/usage-estimate';
import {
  checkStreamOptions,
  int,
  logitBiasSchema,
  num,
  seedSchema,
  stopSchema,
  streamOptionsSchema,
  userIdSchema,
  userSchema,
} from './completion.operation';
import { messagesSchema, responseFormatSchema, toolChoiceSchema, toolSchema } from './chat.schema';
import { type OperationSpec, type ParsedRequest, choicesEnvelope, parsedRequest, validationError } from './operation';

/**
 * The OpenAI ChatCompletionCreateParams: the scalar fields here, the structured ones
 * (messages, tools, tool_choice, response_format) in chat.schema.ts. Errors name the exact
 * place (`messages[2].content[0].type`, `tools[0].function.name`) in `param`.
 */
export const chatRequestSchema = z
  .looseObject({
    model: z.string().min(1, 'must not be empty'),
    messages: messagesSchema,
    max_tokens: int(0, Number.MAX_SAFE_INTEGER),
    max_completion_tokens: int(0, Number.MAX_SAFE_INTEGER),
    temperature: num(0, 2),
    top_p: num(0, 1),
    n: int(1, REQUEST_LIMITS.maxChoices),
    stream: z.boolean().nullish(),
    stream_options: streamOptionsSchema,
    stop: stopSchema,
    presence_penalty: num(-2, 2),
    frequency_penalty: num(-2, 2),
    logit_bias: logitBiasSchema,
    logprobs: z.boolean().nullish(),
    top_logprobs: int(0, 20),
    seed: seedSchema,
    tools: z.array(toolSchema).max(REQUEST_LIMITS.maxTools).nullish(),
    tool_choice: toolChoiceSchema.nullish(),
    parallel_tool_calls: z.boolean().nullish(),
    response_format: responseFormatSchema.nullish(),
    user: userSchema,
    user_id: userIdSchema,
  })
  .superRefine((r, ctx) => {
    checkStreamOptions(r, ctx);
    if (r.top_logprobs != null && r.logprobs !== true) {
      ctx.addIssue({ code: 'custom', path: ['top_logprobs'], message: "requires 'logprobs' to be true" });
    }
    checkToolChoice(r, ctx);
  });

/** A tool_choice that forces a tool needs tools, and a named function or custom tool must be one of them. */
function checkToolChoice(r: Pick<ChatRequest, 'tools' | 'tool_choice'>, ctx: z.RefinementCtx): void {
  const choice = r.tool_choice;
  const tools = r.tools ?? [];
  if (choice == null || choice === 'none' || choice === 'auto') {
    return;
  }
  if (tools.length === 0) {
    ctx.addIssue({ code: 'custom', path: ['tool_choice'], message: "is only allowed when 'tools' are specified" });
    return;
  }
  const named =
    typeof choice !== 'object'
      ? undefined
      : choice.type === 'function'
        ? { kind: 'function' as const, name: choice.function.name }
        : choice.type === 'custom'
          ? { kind: 'custom' as const, name: choice.custom.name }
          : undefined;
  if (named === undefined) {
    return;
  }
  const declared = tools.some((t) =>
    t.type === 'function'
      ? named.kind === 'function' && t.function.name === named.name
      : named.kind === 'custom' && t.custom.name === named.name,
  );
  if (!declared) {
    ctx.addIssue({
      code: 'custom',
      path: ['tool_choice', named.kind, 'name'],
      message: `no ${named.kind === 'function' ? 'function' : 'custom tool'} named '${named.name.slice(0, 64)}' is in 'tools'`,
    });
  }
}

type ChatRequest = z.output<typeof chatRequestSchema>;

/** Characters of a message's text content (string, or the text of its text parts). */
function contentChars(content: unknown): number {
  if (typeof content === 'string') {
    return content.length;
  }
  if (!Array.isArray(content)) {
    return 0;
  }
  let n = 0;
  for (const p of content as { text?: unknown }[]) {
    n += typeof p.text === 'string' ? p.text.length : 0;
  }
  return n;
}

/** ~4 characters per token, plus the few tokens of each message's framing (role, separators). */
function estimateChatPromptTokens(messages: unknown): number {
  if (!Array.isArray(messages)) {
    return 0;
  }
  let chars = 0;
  for (const m of messages as { content?: unknown; tool_calls?: unknown }[]) {
    chars += contentChars(m.content);
    if (Array.isArray(m.tool_calls)) {
      for (const call of m.tool_calls as Partial<ChatToolCall>[]) {
        chars += call.function?.arguments?.length ?? 0;
      }
    }
  }
  return Math.ceil(chars / 4) + 4 * messages.length;
}

function countToolCalls(count: OutputCount, calls: readonly (ChatToolCall | ChatToolCallDelta)[] | undefined): void {
  for (const call of calls ?? []) {
    const args = call.function?.arguments ?? '';
    count.pieces += args === '' ? 0 : 1;
    count.chars += args.length;
  }
}

/** Chunk deltas and whole messages both count their text and their tool-call arguments. */
function countChat(count: OutputCount, items: readonly unknown[]): void {
  for (const item of items as readonly (ChatChunkChoice | ChatChoice)[]) {
    const part = 'delta' in item ? item.delta : item.message;
    const text = typeof part.content === 'string' ? part.content : '';
    count.pieces += text === '' ? 0 : 1;
    count.chars += text.length;
    countToolCalls(count, part.tool_calls);
  }
}

/** `POST /v1/chat/completions`: OpenAI chat completions. */
export const CHAT: OperationSpec = {
  name: 'chat',
  route: 'chat/completions',
  endpoint: '/v1/chat/completions',
  idPrefix: 'chatcmpl-',
  chunkObject: 'chat.completion.chunk',
  parse(body: unknown): ParsedRequest {
    const result = chatRequestSchema.safeParse(body);
    if (!result.success) {
      throw validationError(result.error, body, { path: true });
    }
    return parsedRequest('chat', result.data, result.data.stream === true);
  },
  // max_completion_tokens supersedes max_tokens (OpenAI); either is bounded the same way.
  maxTokens: (p) =>
    typeof p.max_completion_tokens === 'number'
      ? p.max_completion_tokens
      : typeof p.max_tokens === 'number'
        ? p.max_tokens
        : undefined,
  promptTokens: (params) => estimateChatPromptTokens(params.messages),
  countOutput: countChat,
  completionTokens: estimateCompletionTokens,
  resultEnvelope: (meta, usage, systemFingerprint) =>
    choicesEnvelope('chat.completion', meta, usage, systemFingerprint),
};
