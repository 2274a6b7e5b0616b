import { z } from 'zod';
import { REQUEST_LIMITS } from '../contracts/request-limits';

/**
 * The parts of OpenAI's ChatCompletionCreateParams that have a structure of their own:
 * messages, tools, tool_choice and response_format. Every check here keeps the exact path
 * of what is wrong (`messages[2].content[1].type`, `tools[0].function.name`), which the
 * gateway returns as `param`: z.union would report only "no branch matched" at the
 * union's own path, so alternatives are told apart by their `type` (discriminated unions)
 * or by the JSON type of the value (see {@link byKind}).
 */

/**
 * `first` for values `isFirst` accepts, `second` for those `isSecond` accepts, else one
 * issue with `error`. Unlike z.union, an issue inside the branch that applies keeps its path.
 */
function byKind<A extends z.ZodType, B extends z.ZodType>(
  isFirst: (v: unknown) => boolean,
  first: A,
  isSecond: (v: unknown) => boolean,
  second: B,
  error: string,
): z.ZodType<z.output<A> | z.output<B>> {
  return z.unknown().transform((v, ctx) => {
    const schema = isFirst(v) ? first : isSecond(v) ? second : undefined;
    if (schema === undefined) {
      ctx.addIssue({ code: 'custom', message: error });
      return z.NEVER;
    }
    const checked = schema.safeParse(v);
    if (!checked.success) {
      const issue = checked.error.issues[0];
      ctx.addIssue({ code: 'custom', path: issue?.path ?? [], message: issue?.message ?? 'invalid' });
      return z.NEVER;
    }
    return checked.data;
  });
}

const isString = (v: unknown) => typeof v === 'string';
const isObject = (v: unknown) => typeof v === 'object' && v !== null && !Array.isArray(v);

export const ROLES = ['system', 'developer', 'user', 'assistant', 'tool', 'function'] as const;
export type Role = (typeof ROLES)[number];

const textPart = z.looseObject({ type: z.literal('text'), text: z.string() });
/**
 * The part types of a user message (ChatCompletionContentPart). Their bodies are checked
 * for what identifies them only and pass through to the upstream as sent; a type OpenAI
 * does not know is refused here rather than by some upstream after the request was queued.
 */
const userPart = z.discriminatedUnion(
  'type',
  [
    textPart,
    z.looseObject({ type: z.literal('image_url'), image_url: z.looseObject({ url: z.string() }) }),
    z.looseObject({ type: z.literal('input_audio'), input_audio: z.looseObject({ data: z.string() }) }),
    z.looseObject({ type: z.literal('file'), file: z.looseObject({}) }),
  ],
  { error: "expected a content part of type 'text', 'image_url', 'input_audio' or 'file'" },
);
const assistantPart = z.discriminatedUnion(
  'type',
  [textPart, z.looseObject({ type: z.literal('refusal'), refusal: z.string() })],
  { error: "expected a content part of type 'text' or 'refusal'" },
);
const textOnlyPart = z.discriminatedUnion('type', [textPart], { error: "expected a content part of type 'text'" });

/** A string, or a non-empty array of `part`s. */
function content<T extends z.ZodType>(part: T, error: string) {
  const parts = z.array(part).min(1, 'must not be empty').max(REQUEST_LIMITS.maxContentParts);
  return byKind(isString, z.string(), Array.isArray, parts, error);
}
const textContent = content(textOnlyPart, "expected a string or an array of parts of type 'text'");
const name = z.string().max(256).optional();

/** A tool call of an earlier assistant turn: to a function, or to a custom tool (which `tools` may declare). */
const toolCallSchema = z.discriminatedUnion(
  'type',
  [
    z.looseObject({
      id: z.string().min(1),
      type: z.literal('function'),
      function: z.looseObject({ name: z.string().min(1), arguments: z.string() }),
    }),
    z.looseObject({
      id: z.string().min(1),
      type: z.literal('custom'),
      custom: z.looseObject({ name: z.string().min(1), input: z.string() }),
    }),
  ],
  { error: "expected a tool call of type 'function' or 'custom'" },
);

/** One schema per role; picked by `role` so that issues carry precise paths. */
export const MESSAGE_BY_ROLE: Record<Role, z.ZodType> = {
  system: z.looseObject({ content: textContent, name }),
  developer: z.looseObject({ content: textContent, name }),
  user: z.looseObject({ content: content(userPart, 'expected a string or an array of content parts'), name }),
  assistant: z
    .looseObject({
      content: content(assistantPart, 'expected a string or an array of content parts').nullish(),
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

/** `messages`: checked by hand, one message at a time, so a huge conversation costs one issue. */
export const messagesSchema = z.any().superRefine((v: unknown, ctx) => {
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
  // Stops at the first bad message.
  for (let i = 0; i < v.length; i++) {
    const m: unknown = v[i];
    if (!isObject(m)) {
      ctx.addIssue({ code: 'custom', path: [i], message: 'expected a message object' });
      return;
    }
    const role = (m as { role?: unknown }).role;
    const schema =
      typeof role === 'string' && Object.hasOwn(MESSAGE_BY_ROLE, role) ? MESSAGE_BY_ROLE[role as Role] : undefined;
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
const jsonSchemaObject = z.record(z.string(), z.unknown(), { error: 'expected a JSON Schema object' });

export const toolSchema = z.discriminatedUnion(
  'type',
  [
    z.looseObject({
      type: z.literal('function'),
      function: z.looseObject({
        name: functionName,
        description: z.string().optional(),
        parameters: jsonSchemaObject.optional(),
        strict: z.boolean().nullish(),
      }),
    }),
    // Newer tool kinds (custom tools) pass through to upstreams that know them.
    z.looseObject({ type: z.literal('custom'), custom: z.looseObject({ name: functionName }) }),
  ],
  { error: "expected a tool of type 'function' or 'custom'" },
);

const TOOL_CHOICE_ERROR = "expected 'none', 'auto', 'required' or a named tool";
export const toolChoiceSchema = byKind(
  isString,
  z.enum(['none', 'auto', 'required'], { error: TOOL_CHOICE_ERROR }),
  isObject,
  z.discriminatedUnion(
    'type',
    [
      z.looseObject({ type: z.literal('function'), function: z.looseObject({ name: z.string() }) }),
      z.looseObject({ type: z.literal('custom'), custom: z.looseObject({ name: z.string() }) }),
      z.looseObject({
        type: z.literal('allowed_tools'),
        allowed_tools: z.looseObject({
          mode: z.enum(['auto', 'required']),
          tools: z.array(z.looseObject({ type: z.string() })).min(1, 'must not be empty'),
        }),
      }),
    ],
    { error: "expected a tool choice of type 'function', 'custom' or 'allowed_tools'" },
  ),
  TOOL_CHOICE_ERROR,
);

export const responseFormatSchema = z.discriminatedUnion(
  'type',
  [
    z.looseObject({ type: z.literal('text') }),
    z.looseObject({ type: z.literal('json_object') }),
    z.looseObject({
      type: z.literal('json_schema'),
      json_schema: z.looseObject({
        name: functionName,
        description: z.string().optional(),
        schema: jsonSchemaObject.optional(),
        strict: z.boolean().nullish(),
      }),
    }),
  ],
  { error: "expected a response format of type 'text', 'json_object' or 'json_schema'" },
);
