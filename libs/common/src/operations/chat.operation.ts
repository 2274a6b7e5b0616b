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
import { type OperationSpec, type ParsedRequest, choicesEnvelope, parsedRequest, validationError } from './operation';

/**
 * The OpenAI ChatCompletionCreateParams. Messages are checked per role, so an error names
 * the exact place (`messages[2].content[0].type`); content parts other than text (images,
 * audio, files) are checked for their `type` only and pass through to the upstream as sent.
 */
const ROLES = ['system', 'developer', 'user', 'assistant', 'tool', 'function'] as const;

const textPart = z.looseObject({ type: z.literal('text'), text: z.string() });
/** Any part of a user message: text is checked, other types pass through to OpenAI-compatible upstreams. */
const userPart = z.looseObject({ type: z.string().min(1, 'must name the part type') }).superRefine((p, ctx) => {
  if (p.type === 'text' && typeof (p as { text?: unknown }).text !== 'string') {
    ctx.addIssue({ code: 'custom', path: ['text'], message: 'expected a string' });
  }
});
const assistantPart = z.union([textPart, z.looseObject({ type: z.literal('refusal'), refusal: z.string() })], {
  error: "expected a part of type 'text' or 'refusal'",
});
const parts = <T extends z.ZodType>(part: T) =>
  z.array(part).min(1, 'must not be empty').max(REQUEST_LIMITS.maxContentParts);
const textContent = z.union([z.string(), parts(textPart)], {
  error: "expected a string or an array of parts of type 'text'",
});
const name = z.string().max(256).optional();

const toolCallSchema = z.looseObject({
  id: z.string().min(1),
  type: z.literal('function'),
  function: z.looseObject({ name: z.string().min(1), arguments: z.string() }),
});

/** One schema per role; picked by `role` so that issues carry precise paths. */
const MESSAGE_BY_ROLE: Record<(typeof ROLES)[number], z.ZodType> = {
  system: z.looseObject({ content: textContent, name }),
  developer: z.looseObject({ content: textContent, name }),
  user: z.looseObject({
    content: z.union([z.string(), parts(userPart)], { error: 'expected a string or an array of content parts' }),
    name,
  }),
  assistant: z
    .looseObject({
      content: z
        .union([z.string(), parts(assistantPart)], { error: 'expected a string or an array of parts' })
        .nullish(),
      name,
      refusal: z.string().nullish(),
      tool_calls: z.array(toolCallSchema).max(REQUEST_LIMITS.maxTools).optional(),
      function_call: z.looseObject({ name: z.string(), arguments: z.string() }).nullish(),
    })
    .superRefine((m, ctx) => {
      if (m.content == null && m.tool_calls === undefined && m.function_call == null) {
        ctx.addIssue({
          code: 'custom',
          path: ['content'],
          message: "required unless 'tool_calls' or 'function_call' is given",
        });
      }
    }),
  tool: z.looseObject({ content: textContent, tool_call_id: z.string().min(1, 'must not be empty') }),
  function: z.looseObject({ content: z.string().nullable(), name: z.string().min(1) }),
};

const messagesSchema = z.any().superRefine((v: unknown, ctx) => {
  if (!Array.isArray(v)) {
    ctx.addIssue({ code: 'custom', path: [], message: v === undefined ? 'required' : 'expected an array of messages' });
    return;
  }
  if (v.length === 0) {
    ctx.addIssue({ code: 'custom', path: [], message: 'must contain at least one message' });
    return;
  }
  if (v.length > REQUEST_LIMITS.maxMessages) {
    ctx.addIssue({ code: 'custom', path: [], message: `may contain at most ${REQUEST_LIMITS.maxMessages} messages` });
    return;
  }
  // Stops at the first bad message: a huge conversation costs one issue, not one per message.
  for (let i = 0; i < v.length; i++) {
    const m: unknown = v[i];
    if (typeof m !== 'object' || m === null || Array.isArray(m)) {
      ctx.addIssue({ code: 'custom', path: [i], message: 'expected a message object' });
      return;
    }
    const role = (m as { role?: unknown }).role;
    const schema = typeof role === 'string' ? MESSAGE_BY_ROLE[role as (typeof ROLES)[number]] : undefined;
    if (schema === undefined) {
      ctx.addIssue({
        code: 'custom',
        path: [i, 'role'],
        message: role === undefined ? 'required' : `expected one of ${ROLES.map((r) => `'${r}'`).join(', ')}`,
      });
      return;
    }
    const checked = schema.safeParse(m);
    if (!checked.success) {
      const issue = checked.error.issues[0];
      ctx.addIssue({ code: 'custom', path: [i, ...(issue?.path ?? [])], message: issue?.message ?? 'invalid' });
      return;
    }
  }
});

const functionName = z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, 'must be 1 to 64 letters, digits, _ or -');
const toolSchema = z.union(
  [
    z.looseObject({
      type: z.literal('function'),
      function: z.looseObject({
        name: functionName,
        description: z.string().optional(),
        parameters: z.record(z.string(), z.unknown()).optional(),
        strict: z.boolean().nullish(),
      }),
    }),
    // Newer tool kinds (custom tools) pass through to upstreams that know them.
    z.looseObject({ type: z.literal('custom'), custom: z.looseObject({ name: functionName }) }),
  ],
  { error: "expected a tool of type 'function' (with function.name) or 'custom'" },
);
const toolChoiceSchema = z.union(
  [
    z.enum(['none', 'auto', 'required']),
    z.looseObject({ type: z.literal('function'), function: z.looseObject({ name: z.string() }) }),
    z.looseObject({ type: z.literal('custom'), custom: z.looseObject({ name: z.string() }) }),
    z.looseObject({ type: z.literal('allowed_tools'), allowed_tools: z.looseObject({}) }),
  ],
  { error: "expected 'none', 'auto', 'required' or a named tool" },
);
const responseFormatSchema = z.union(
  [
    z.looseObject({ type: z.literal('text') }),
    z.looseObject({ type: z.literal('json_object') }),
    z.looseObject({
      type: z.literal('json_schema'),
      json_schema: z.looseObject({
        name: z.string().regex(/^[A-Za-z0-9_-]{1,64}$/, 'must be 1 to 64 letters, digits, _ or -'),
        description: z.string().optional(),
        schema: z.record(z.string(), z.unknown()).optional(),
        strict: z.boolean().nullish(),
      }),
    }),
  ],
  { error: "expected {type: 'text'}, {type: 'json_object'} or {type: 'json_schema', json_schema: {name, schema}}" },
);

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
    const choice = r.tool_choice;
    const tools = r.tools ?? [];
    if (choice != null && choice !== 'none' && choice !== 'auto' && tools.length === 0) {
      ctx.addIssue({ code: 'custom', path: ['tool_choice'], message: "is only allowed when 'tools' are specified" });
    } else if (typeof choice === 'object' && choice !== null && choice.type === 'function') {
      const wanted = (choice as { function: { name: string } }).function.name;
      if (!tools.some((t) => t.type === 'function' && (t as { function: { name: string } }).function.name === wanted)) {
        ctx.addIssue({
          code: 'custom',
          path: ['tool_choice', 'function', 'name'],
          message: `no function named '${wanted.slice(0, 64)}' is in 'tools'`,
        });
      }
    }
  });

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
