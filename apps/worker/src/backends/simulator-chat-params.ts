import { createHash } from 'node:crypto';
import { isRecord } from './upstream-errors';
import { bool, int, invalid, parseStop, type SimParams } from './simulator-params';

/**
 * The chat parameters the simulator honours, checked and defaulted. As for completions,
 * the gateway validates too, but the simulator refuses nonsense itself (tests and load
 * generators drive it directly).
 */
export interface ChatSimParams {
  /** For the text generator: the last user message is the "prompt" (echoed, or seeding the lorem words). */
  text: SimParams;
  /** Alternatives per token when `logprobs: true`, else null. */
  topLogprobs: number | null;
  /** Whitespace-separated words of every message's text content (see messageText). */
  promptTokens: number;
  /** The function every choice calls, or null for an ordinary text answer. */
  tool: SimTool | null;
  /** A digest of the messages, so that tool call ids differ from one conversation turn to the next. */
  conversation: string;
}

export interface SimTool {
  name: string;
  /** `parameters.properties` of the function's JSON schema; empty when it has none. */
  properties: Record<string, unknown>;
}

/**
 * Without max_tokens a real model stops at its context length; the simulator stops at
 * 4096 tokens, the default `max_output_tokens` of simulator models, so an echo of a huge
 * message does not run on unbounded.
 */
const DEFAULT_MAX_TOKENS = 4096;

export function parseChatParams(params: Record<string, unknown>): ChatSimParams {
  const messages = parseMessages(params.messages);
  const texts = messages.map((m) => messageText(m.content));
  let lastUser = '';
  for (let i = messages.length - 1; i >= 0; i--) {
    if (messages[i]?.role === 'user') {
      lastUser = texts[i] ?? '';
      break;
    }
  }
  // max_completion_tokens is OpenAI's newer name; when both are sent it is the one that counts.
  const maxParam = params.max_completion_tokens ?? null;
  const maxTokens =
    maxParam !== null
      ? int(maxParam, 'max_completion_tokens', DEFAULT_MAX_TOKENS, 0, Number.MAX_SAFE_INTEGER)
      : int(params.max_tokens, 'max_tokens', DEFAULT_MAX_TOKENS, 0, Number.MAX_SAFE_INTEGER);
  const logprobs = bool(params.logprobs, 'logprobs');
  const topLogprobs = int(params.top_logprobs, 'top_logprobs', 0, 0, 20);
  return {
    text: {
      prompts: [lastUser],
      n: int(params.n, 'n', 1, 1, 128),
      maxTokens,
      echo: false,
      stop: parseStop(params.stop),
      // The generator scores the sampled token and this many alternatives; chat keeps the
      // first top_logprobs of those, the sampled token first (see chatLogprob).
      logprobs: logprobs ? topLogprobs : null,
      seed: params.seed === undefined || params.seed === null ? null : int(params.seed, 'seed', 0, -(2 ** 63), 2 ** 63),
    },
    topLogprobs: logprobs ? topLogprobs : null,
    promptTokens: texts.reduce((sum, t) => sum + words(t), 0),
    tool: chosenTool(params.tools, params.tool_choice),
    conversation: createHash('sha256').update(JSON.stringify(params.messages)).digest('hex'),
  };
}

interface SimMessage {
  role: string;
  content: unknown;
}

function parseMessages(raw: unknown): SimMessage[] {
  if (!Array.isArray(raw) || raw.length === 0) {
    throw invalid('messages must be a non-empty array of messages', 'messages');
  }
  return raw.map((m: unknown) => {
    if (!isRecord(m) || typeof m.role !== 'string') {
      throw invalid('each message must be an object with a role', 'messages');
    }
    return { role: m.role, content: m.content };
  });
}

/**
 * A message's text: a string content, or the `text` parts of an array content joined with
 * a space. Images, audio, files and a missing content (an assistant's tool calls) add nothing.
 */
function messageText(content: unknown): string {
  if (typeof content === 'string') {
    return content;
  }
  if (content === undefined || content === null) {
    return '';
  }
  if (!Array.isArray(content)) {
    throw invalid('a message content must be a string or an array of parts', 'messages');
  }
  const parts: string[] = [];
  for (const part of content) {
    if (isRecord(part) && part.type === 'text' && typeof part.text === 'string') {
      parts.push(part.text);
    }
  }
  return parts.join(' ');
}

function words(text: string): number {
  return text.split(/\s+/).filter((w) => w !== '').length;
}

/**
 * The function `tool_choice` forces, if any: a named one; for `required` the first function
 * tool; for `allowed_tools` in mode `required` the first allowed function. `auto`, `none`
 * and `allowed_tools` in mode `auto` answer text: the simulator never chooses a tool itself.
 */
function chosenTool(rawTools: unknown, choice: unknown): SimTool | null {
  const tools = parseTools(rawTools);
  if (choice === undefined || choice === null || choice === 'auto' || choice === 'none') {
    return null;
  }
  if (choice === 'required') {
    return firstOf(tools, 'tool_choice "required" needs a function tool in tools');
  }
  if (isRecord(choice) && choice.type === 'function' && isRecord(choice.function)) {
    const name = choice.function.name;
    const tool = tools.find((t) => t.name === name);
    if (tool === undefined) {
      throw invalid(`tool_choice names a function that is not in tools: ${String(name)}`, 'tool_choice');
    }
    return tool;
  }
  if (isRecord(choice) && choice.type === 'allowed_tools' && isRecord(choice.allowed_tools)) {
    const { mode, tools: allowed } = choice.allowed_tools;
    if (mode === 'auto') {
      return null;
    }
    if (mode === 'required' && Array.isArray(allowed)) {
      const names = new Set(allowed.map((a) => (isRecord(a) && isRecord(a.function) ? a.function.name : undefined)));
      const candidates = tools.filter((t) => names.has(t.name));
      return firstOf(candidates, 'tool_choice allowed_tools names no function tool of tools');
    }
  }
  throw invalid(
    'the simulator supports tool_choice "none", "auto", "required", {type: "function", function: {name}} and allowed_tools of function tools',
    'tool_choice',
  );
}

function firstOf(candidates: SimTool[], message: string): SimTool {
  const first = candidates[0];
  if (first === undefined) {
    throw invalid(message, 'tool_choice');
  }
  return first;
}

/**
 * The function tools of `tools`. Custom tools (free-form input, which OpenAI also accepts)
 * are left out: the simulator answers in text or with a function call, never with a call
 * to a custom tool, but a request that declares one must not fail for it.
 */
function parseTools(raw: unknown): SimTool[] {
  if (raw === undefined || raw === null) {
    return [];
  }
  if (!Array.isArray(raw)) {
    throw invalid('tools must be an array', 'tools');
  }
  const out: SimTool[] = [];
  for (const t of raw as unknown[]) {
    if (isRecord(t) && t.type === 'custom') {
      continue;
    }
    if (!isRecord(t) || t.type !== 'function' || !isRecord(t.function) || typeof t.function.name !== 'string') {
      throw invalid('each tool must be {type: "function", function: {name, parameters?}} or a custom tool', 'tools');
    }
    const parameters = t.function.parameters;
    const properties = isRecord(parameters) && isRecord(parameters.properties) ? parameters.properties : {};
    out.push({ name: t.function.name, properties });
  }
  return out;
}
