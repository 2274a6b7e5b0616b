import type { z } from 'zod';
import { ApiError } from '../errors/api.error';
import type { OperationName, Usage } from '../contracts/openai';
import { isOperationParam } from '../contracts/openai-params';
import type { OutputCount } from '../usage/usage-estimate';
import type { ModelEntry } from '../config/router-config';

/** A validated request body of one operation, split into what the gateway keeps and what a job carries. */
export interface ParsedRequest {
  op: OperationName;
  model: string;
  stream: boolean;
  includeUsage: boolean;
  /** OpenAI's `user` and Aqueduct's own `user_id` (kept for the usage log, never forwarded). */
  user: string | null;
  userId: string | null;
  /**
   * What the worker forwards: the operation's OpenAI parameters of the body (minus the
   * fields the gateway owns), plus the extensions its model allows (see `forModel`).
   */
  params: Record<string, unknown>;
  /** Extension fields of the body, kept until the model is known. */
  extensions: Record<string, unknown>;
}

/** What the response envelope needs besides the output (see {@link OperationSpec.resultEnvelope}). */
export interface ResponseMeta {
  /** `<idPrefix><rid>`: the same for every chunk of a stream. */
  id: string;
  created: number;
  model: string;
}

/**
 * Everything that differs between OpenAI operations, in one definition each: the gateway
 * validates and frames with it, the worker estimates usage with it. Adding an operation is
 * one such definition here and its backend calls in the worker.
 */
export interface OperationSpec {
  readonly name: OperationName;
  /**
   * The route, below `/` and `/v1` on the gateway and below `api_base` on an
   * OpenAI-compatible upstream: `completions`, `chat/completions`, `embeddings`.
   */
  readonly route: string;
  /** The public route, for messages that point a client to the right endpoint. */
  readonly endpoint: string;
  /** Prefix of the response id (`cmpl-`, `chatcmpl-`); embeddings have no id. */
  readonly idPrefix: string;
  /** `object` of each stream chunk; undefined for an operation that never streams. */
  readonly chunkObject?: string;
  /** Validates a request body; throws a 400 ApiError naming the field. */
  parse(body: unknown): ParsedRequest;
  /** The output-token bound the request asks for (`max_tokens`, `max_completion_tokens`). */
  maxTokens(params: Record<string, unknown>): number | undefined;
  /** Prompt tokens as estimated when the backend reported none. */
  promptTokens(params: Record<string, unknown>): number;
  /** Adds a stream chunk's choices, or a result's output items, to `count`. */
  countOutput(count: OutputCount, items: readonly unknown[]): void;
  /** Completion tokens as estimated from what was counted. */
  completionTokens(count: OutputCount, stream: boolean): number;
  /**
   * The JSON text around a non-stream response's output array: `head + JSON(output) + tail`
   * is the response body. Assembled as text so a large output, relayed as raw JSON slices,
   * is never parsed or serialised again by the gateway.
   */
  resultEnvelope(meta: ResponseMeta, usage: Usage | null, systemFingerprint?: string): [head: string, tail: string];
}

/** Fields the gateway owns and never forwards. */
const GATEWAY_FIELDS: ReadonlySet<string> = new Set(['model', 'stream', 'stream_options', 'user_id']);

/**
 * Splits a validated body into the operation's OpenAI parameters and the extensions (kept
 * until the model says which of them its deployments allow).
 */
export function splitParams(
  op: OperationName,
  body: Record<string, unknown>,
): { params: Record<string, unknown>; extensions: Record<string, unknown> } {
  const params: Record<string, unknown> = {};
  const extensions: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(body)) {
    if (GATEWAY_FIELDS.has(k)) {
      continue;
    }
    if (isOperationParam(op, k)) {
      params[k] = v;
    } else {
      extensions[k] = v;
    }
  }
  return { params, extensions };
}

/** The common tail of every `parse`: the fields every operation treats alike. */
export function parsedRequest(
  op: OperationName,
  body: Record<string, unknown> & { model: string },
  stream: boolean,
): ParsedRequest {
  const { params, extensions } = splitParams(op, body);
  const options = body.stream_options as { include_usage?: boolean | null } | null | undefined;
  const userId = body.user_id;
  return {
    op,
    model: body.model,
    stream,
    includeUsage: stream && options?.include_usage === true,
    user: typeof body.user === 'string' ? body.user : null,
    userId: typeof userId === 'number' ? String(userId) : typeof userId === 'string' ? userId : null,
    params,
    extensions,
  };
}

/**
 * A zod failure as OpenAI words it: the first issue, its field in `param` (the top-level
 * name, or with `path: true` the whole path such as `messages[2].role`) and a message
 * naming the exact place.
 */
export function validationError(error: z.ZodError, body: unknown, opts: { path?: boolean } = {}): ApiError {
  const issue = error.issues[0];
  if (issue === undefined) {
    return ApiError.invalid('Invalid request body.');
  }
  const top = typeof issue.path[0] === 'string' ? issue.path[0] : null;
  const where = issue.path
    .map((p) => (typeof p === 'number' ? `[${p}]` : `.${String(p)}`))
    .join('')
    .slice(1);
  if (top === null) {
    return ApiError.invalid(`Invalid request: ${issue.message}.`);
  }
  const param = opts.path === true ? where : top;
  if (isMissing(body, issue.path)) {
    return ApiError.invalid(`Missing required parameter: '${where}'.`, param);
  }
  return ApiError.invalid(`Invalid value for '${where}': ${issue.message}.`, param);
}

function isMissing(body: unknown, path: readonly PropertyKey[]): boolean {
  let at: unknown = body;
  for (const key of path) {
    if (typeof at !== 'object' || at === null) {
      return false;
    }
    at = (at as Record<PropertyKey, unknown>)[key];
  }
  return at === undefined;
}

/** The envelope of a `choices` result (text and chat completions differ only in `object`). */
export function choicesEnvelope(
  object: string,
  meta: ResponseMeta,
  usage: Usage | null,
  systemFingerprint: string | undefined,
): [head: string, tail: string] {
  const fingerprint =
    systemFingerprint === undefined ? '' : `,"system_fingerprint":${JSON.stringify(systemFingerprint)}`;
  return [
    `{"id":${JSON.stringify(meta.id)},"object":${JSON.stringify(object)},"created":${meta.created},"model":${JSON.stringify(meta.model)}${fingerprint},"choices":`,
    `,"usage":${JSON.stringify(usageOrZero(usage))}}`,
  ];
}

/** A usage object for an envelope: the backend's, or zeros when it reported none. */
export function usageOrZero(usage: Usage | null): Usage {
  return usage ?? { prompt_tokens: 0, completion_tokens: 0, total_tokens: 0 };
}

/**
 * The model-dependent checks and the job's parameters: the output-token bound within the
 * model's `max_output_tokens`, and only the extensions some deployment of the model allows,
 * so a token holder cannot reach an upstream's private surface (nor smuggle `access_token`).
 */
export function jobParams(op: OperationSpec, request: ParsedRequest, model: ModelEntry): Record<string, unknown> {
  const asked = op.maxTokens(request.params);
  if (model.maxOutputTokens !== undefined && asked !== undefined && asked > model.maxOutputTokens) {
    throw ApiError.invalid(
      `Invalid value for 'max_tokens': ${asked} is above the maximum of ${model.maxOutputTokens} output tokens for model \`${model.name}\`.`,
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
