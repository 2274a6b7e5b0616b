import { createHash } from 'node:crypto';
import type { SimTool } from './simulator-chat-params';
import { pick, prng } from './simulator-text';

/**
 * The simulator's tool calls: deterministic ids and arguments that are a valid JSON
 * object for the function's schema (one value of each property's type), so that a client's
 * tool-calling loop can be exercised end to end.
 */
export interface SimToolCall {
  id: string;
  /** The arguments JSON, cut into the pieces a stream sends; joined they are the whole string. */
  fragments: string[];
}

/** Characters per streamed arguments piece: a few per "token", like a real model's deltas. */
const FRAGMENT_CHARS = 8;

/** `conversation` identifies the request's messages: the same request, the same call; the next turn, a new id. */
export function simulatedToolCall(
  model: string,
  tool: SimTool,
  choice: number,
  seed: number | null,
  conversation: string,
): SimToolCall {
  const seedText = JSON.stringify([model, tool.name, choice, seed, conversation]);
  const id = `call_${createHash('sha256').update(seedText).digest('hex').slice(0, 24)}`;
  const rng = prng(`${seedText}:arguments`);
  const args: Record<string, unknown> = {};
  for (const [name, schema] of Object.entries(tool.properties)) {
    args[name] = exampleValue(schema, rng);
  }
  // By code points: an enum value with an emoji must not be split inside its surrogate pair.
  const chars = Array.from(JSON.stringify(args));
  const fragments: string[] = [];
  for (let i = 0; i < chars.length; i += FRAGMENT_CHARS) {
    fragments.push(chars.slice(i, i + FRAGMENT_CHARS).join(''));
  }
  return { id, fragments };
}

/**
 * A value that fits a property's JSON schema well enough for a demo: its first `enum` value,
 * else one of its `type` (the first non-null one of a type list). Nested schemas are not
 * filled in: an array is `[]` and an object `{}`.
 */
function exampleValue(schema: unknown, rng: () => number): unknown {
  if (typeof schema !== 'object' || schema === null) {
    return null;
  }
  const { enum: choices, type } = schema as { enum?: unknown; type?: unknown };
  if (Array.isArray(choices) && choices.length > 0) {
    return choices[0] as unknown;
  }
  const kind: unknown = Array.isArray(type) ? (type as unknown[]).find((t) => t !== 'null') : type;
  switch (kind) {
    case 'string':
      return pick(rng);
    case 'integer':
      return Math.floor(rng() * 100);
    case 'number':
      return Math.round(rng() * 10_000) / 100;
    case 'boolean':
      return true;
    case 'array':
      return [];
    case 'object':
      return {};
    default:
      return null;
  }
}
