import { Pool } from 'undici';
import { type Deployment, type OperationName, pickUpstreamParams, type StreamChoice } from '@app/common';
import { BackendError } from './backend.error';
import type { BackendRequest, BackendResult, LlmBackend, StreamEvent } from './llm-backend';
import { LARGE_BODY_BYTES, parseJsonOrUndefined, readText, UpstreamCall, yieldToLoop } from './upstream-call';
import { fromErrorFrame, isRecord, upstreamInvalid, upstreamProtocolError } from './upstream-errors';
import { normaliseChunk, normaliseCompletion, type ShapeError } from './upstream-normalize';
import { chatChoicesAsChunks, chatStreamNormaliser, normaliseChatCompletion } from './upstream-normalize-chat';
import { normaliseEmbeddings } from './upstream-normalize-embedding';
import { sseMessages } from './upstream-sse';

export interface OpenAICompatibleBackendOptions {
  /** No bytes from a streaming upstream for this long means it stalled. Default 15000. */
  idleTimeoutMs?: number;
  /** Connections per upstream origin; undici's default (no limit) when omitted. */
  connectionsPerOrigin?: number;
  /** Largest non-stream response body accepted. Default 64 MiB. */
  maxResponseBytes?: number;
}

interface Target {
  pool: Pool;
  path: string;
}

/** The route of each operation below the deployment's `api_base`. */
const ROUTES: Readonly<Record<OperationName, string>> = {
  completion: '/completions',
  chat: '/chat/completions',
  embedding: '/embeddings',
};

/**
 * Talks to OpenAI-compatible upstreams (vLLM, OpenAI, Ollama, llama.cpp) on the route of
 * the request's operation (`/completions`, `/chat/completions`, `/embeddings`) and hands
 * back OpenAI-normalised results. Only the operation's OpenAI parameters and the
 * deployment's `extra_body_allowed` fields go upstream (see pickUpstreamParams).
 */
export class OpenAICompatibleBackend implements LlmBackend {
  /** One keep-alive pool per origin, shared by every deployment that points there. */
  private readonly pools = new Map<string, Pool>();
  /** `op apiBase` → pool and request path, so a URL is parsed once per deployment and operation. */
  private readonly targets = new Map<string, Target>();
  private readonly idleTimeoutMs: number;
  private readonly maxResponseBytes: number;

  constructor(private readonly options: OpenAICompatibleBackendOptions = {}) {
    this.idleTimeoutMs = options.idleTimeoutMs ?? 15_000;
    this.maxResponseBytes = options.maxResponseBytes ?? 64 * 1024 * 1024;
  }

  async complete(req: BackendRequest): Promise<BackendResult> {
    const call = new UpstreamCall(req, false, this.idleTimeoutMs);
    try {
      const { pool, path } = this.target(req.deployment, req.op);
      const res = await call.send(pool, path, upstreamBody(req, false));
      const { text, truncated } = await readText(res.body, this.maxResponseBytes);
      if (truncated) {
        throw upstreamInvalid(`the body exceeds ${this.maxResponseBytes} bytes`);
      }
      // A large body is parsed in a turn of its own (see yieldToLoop); so is what follows.
      const large = text.length > LARGE_BODY_BYTES;
      if (large) {
        await yieldToLoop();
      }
      const body = parseJsonOrUndefined(text);
      if (body === undefined) {
        throw upstreamInvalid('the body is not JSON');
      }
      if (large) {
        await yieldToLoop();
      }
      return normaliseResult(req.op, body);
    } catch (err) {
      throw call.failure(err);
    } finally {
      call.dispose();
    }
  }

  async *stream(req: BackendRequest): AsyncGenerator<StreamEvent> {
    if (req.op === 'embedding') {
      // The runner never streams embeddings; calling the upstream this way would only confuse it.
      throw new BackendError(400, 'embeddings cannot be streamed', 'invalid_request_error', false, 'stream');
    }
    const call = new UpstreamCall(req, true, this.idleTimeoutMs);
    // Per request: the chat normaliser remembers which choices have had their first delta.
    const normaliseFrame: (frame: unknown, shapeError: ShapeError) => StreamEvent | null =
      req.op === 'chat' ? chatStreamNormaliser() : normaliseChunk;
    try {
      const { pool, path } = this.target(req.deployment, req.op);
      const res = await call.send(pool, path, upstreamBody(req, true));
      if (isJsonResponse(res.headers['content-type'])) {
        // Some servers ignore `stream: true` (or fail with a JSON error on a 200).
        yield* wholeResponseAsStream(req.op, await readText(res.body, this.maxResponseBytes));
        return;
      }
      const read = call.reader(res.body);
      for await (const message of sseMessages(read)) {
        const frame = parseJsonOrUndefined(message.data);
        if (frame === undefined) {
          throw upstreamProtocolError('a frame is not valid JSON');
        }
        if (message.event === 'error') {
          throw fromErrorFrame(isRecord(frame) && isRecord(frame.error) ? frame.error : frame);
        }
        const event = normaliseFrame(frame, upstreamProtocolError);
        if (event !== null) {
          yield event;
        }
      }
      await call.drain(read);
    } catch (err) {
      throw call.failure(err);
    } finally {
      call.dispose();
    }
  }

  /** Closes every upstream connection; in-flight requests fail. */
  async close(): Promise<void> {
    const pools = [...this.pools.values()];
    this.pools.clear();
    this.targets.clear();
    await Promise.all(pools.map((p) => p.destroy()));
  }

  private target(d: Deployment, op: OperationName): Target {
    if (d.apiBase === undefined) {
      // Config validation requires api_base for openai/ deployments; this is a programming error.
      throw new BackendError(500, `deployment ${d.id} has no api_base`, 'server_error', true);
    }
    const key = `${op} ${d.apiBase}`;
    let target = this.targets.get(key);
    if (target === undefined) {
      const url = new URL(d.apiBase);
      let pool = this.pools.get(url.origin);
      if (pool === undefined) {
        pool = new Pool(url.origin, { connections: this.options.connectionsPerOrigin ?? null });
        this.pools.set(url.origin, pool);
      }
      target = { pool, path: `${url.pathname.replace(/\/+$/, '')}${ROUTES[op]}${url.search}` };
      this.targets.set(key, target);
    }
    return target;
  }
}

function normaliseResult(op: OperationName, body: unknown): BackendResult {
  switch (op) {
    case 'completion':
      return normaliseCompletion(body);
    case 'chat':
      return normaliseChatCompletion(body);
    case 'embedding':
      return normaliseEmbeddings(body);
  }
}

/**
 * A JSON answer to a stream request, as the events the stream would have carried: one
 * chunk with the whole completion choices, or for chat the content chunk and the finish
 * chunk (see chatChoicesAsChunks), then usage.
 */
function* wholeResponseAsStream(
  op: 'completion' | 'chat',
  body: { text: string; truncated: boolean },
): Generator<StreamEvent> {
  const parsed = body.truncated ? undefined : parseJsonOrUndefined(body.text);
  if (parsed === undefined) {
    throw upstreamInvalid('the body is not JSON');
  }
  let result: BackendResult;
  let chunks: StreamChoice[][];
  if (op === 'chat') {
    const chat = normaliseChatCompletion(parsed);
    result = chat;
    chunks = chatChoicesAsChunks(chat.output);
  } else {
    const text = normaliseCompletion(parsed);
    result = text;
    chunks = [text.output];
  }
  const fingerprint = result.system_fingerprint;
  for (const choices of chunks) {
    yield fingerprint === undefined
      ? { type: 'chunk', choices }
      : { type: 'chunk', choices, system_fingerprint: fingerprint };
  }
  if (result.usage !== null) {
    yield { type: 'usage', usage: result.usage };
  }
}

/**
 * The client's OpenAI parameters plus the extensions this deployment allows, with the
 * fields the gateway owns set here. Everything else is dropped even if a gateway let it
 * through (an older gateway, a job written by hand): the upstream's surface is the
 * operator's decision. Usage is always requested on streams: accounting needs it.
 * Embeddings have no stream fields at all (OpenAI rejects unknown ones).
 */
function upstreamBody(req: BackendRequest, stream: boolean): string {
  const body = pickUpstreamParams(req.op, req.params, req.deployment.extraBodyAllowed);
  body.model = req.deployment.upstreamModel;
  if (req.op === 'embedding') {
    delete body.stream;
    delete body.stream_options;
    return JSON.stringify(body);
  }
  body.stream = stream;
  if (stream) {
    body.stream_options = { include_usage: true };
  } else {
    // OpenAI rejects stream_options on non-stream requests.
    delete body.stream_options;
  }
  return JSON.stringify(body);
}

function isJsonResponse(contentType: string | string[] | undefined): boolean {
  const value = Array.isArray(contentType) ? contentType[0] : contentType;
  return value !== undefined && /^application\/json\b/i.test(value);
}
