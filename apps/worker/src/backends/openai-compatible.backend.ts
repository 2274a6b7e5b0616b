import { Pool } from 'undici';
import { type ChoiceDelta, type Deployment, pickUpstreamParams } from '@app/common';
import { BackendError } from './backend-error';
import type { BackendRequest, BackendResult, LlmBackend, StreamEvent } from './llm-backend';
import { parseJsonOrUndefined, readText, UpstreamCall } from './upstream-call';
import { fromErrorFrame, isRecord, upstreamInvalid, upstreamProtocolError } from './upstream-errors';
import { normaliseChunk, normaliseCompletion } from './upstream-normalize';
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

/**
 * Talks to OpenAI-compatible `/v1/completions` upstreams (vLLM, OpenAI, Ollama, llama.cpp)
 * and hands back OpenAI-normalised results. Only OpenAI's completion parameters and the
 * deployment's `extra_body_allowed` fields go upstream (see COMPLETION_PARAMS).
 */
export class OpenAICompatibleBackend implements LlmBackend {
  /** One keep-alive pool per origin, shared by every deployment that points there. */
  private readonly pools = new Map<string, Pool>();
  /** apiBase → pool and request path, so a URL is parsed once per deployment, not per request. */
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
      const { pool, path } = this.target(req.deployment);
      const res = await call.send(pool, path, upstreamBody(req, false));
      const { text, truncated } = await readText(res.body, this.maxResponseBytes);
      if (truncated) {
        throw upstreamInvalid(`the body exceeds ${this.maxResponseBytes} bytes`);
      }
      const body = parseJsonOrUndefined(text);
      if (body === undefined) {
        throw upstreamInvalid('the body is not JSON');
      }
      return normaliseCompletion(body);
    } catch (err) {
      throw call.failure(err);
    } finally {
      call.dispose();
    }
  }

  async *stream(req: BackendRequest): AsyncGenerator<StreamEvent> {
    const call = new UpstreamCall(req, true, this.idleTimeoutMs);
    try {
      const { pool, path } = this.target(req.deployment);
      const res = await call.send(pool, path, upstreamBody(req, true));
      if (isJsonResponse(res.headers['content-type'])) {
        // Some servers ignore `stream: true` (or fail with a JSON error on a 200).
        yield* this.wholeResponseAsStream(await readText(res.body, this.maxResponseBytes));
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
        const event = normaliseChunk(frame, upstreamProtocolError);
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

  private *wholeResponseAsStream(body: { text: string; truncated: boolean }): Generator<StreamEvent> {
    const parsed = body.truncated ? undefined : parseJsonOrUndefined(body.text);
    if (parsed === undefined) {
      throw upstreamInvalid('the body is not JSON');
    }
    const result = normaliseCompletion(parsed);
    const choices = result.output as ChoiceDelta[];
    yield result.system_fingerprint === undefined
      ? { type: 'chunk', choices }
      : { type: 'chunk', choices, system_fingerprint: result.system_fingerprint };
    if (result.usage !== null) {
      yield { type: 'usage', usage: result.usage };
    }
  }

  private target(d: Deployment): Target {
    if (d.apiBase === undefined) {
      // Config validation requires api_base for openai/ deployments; this is a programming error.
      throw new BackendError(500, `deployment ${d.id} has no api_base`, 'server_error', true);
    }
    let target = this.targets.get(d.apiBase);
    if (target === undefined) {
      const url = new URL(d.apiBase);
      let pool = this.pools.get(url.origin);
      if (pool === undefined) {
        pool = new Pool(url.origin, { connections: this.options.connectionsPerOrigin ?? null });
        this.pools.set(url.origin, pool);
      }
      target = { pool, path: `${url.pathname.replace(/\/+$/, '')}/completions${url.search}` };
      this.targets.set(d.apiBase, target);
    }
    return target;
  }
}

/**
 * The client's OpenAI parameters plus the extensions this deployment allows, with the
 * fields the gateway owns set here. Everything else is dropped even if a gateway let it
 * through (an older gateway, a job written by hand): the upstream's surface is the
 * operator's decision. Usage is always requested on streams: accounting needs it.
 */
function upstreamBody(req: BackendRequest, stream: boolean): string {
  const body = pickUpstreamParams(req.op, req.params, req.deployment.extraBodyAllowed);
  body.model = req.deployment.upstreamModel;
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
