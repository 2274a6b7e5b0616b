import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * A real HTTP server speaking the OpenAI `/v1/completions` protocol, for tests and for the
 * benchmark (so it is kept cheap per request). The text is deterministic: `" echo:"` then
 * `" " + word` per prompt word, so every client can check it received its own answer.
 *
 * Behaviour knobs are extra body fields (a deployment must list them in
 * `extra_body_allowed` for them to get through, see FAKE_UPSTREAM_KNOBS):
 * - `fake_ttft_ms`, `fake_itl_ms`: delay before the first token / between tokens.
 * - `fake_fail`:
 *   - `status:<code>`: that status with an OpenAI error body (429 adds `retry-after: 1`);
 *     `fake_error_message` replaces the message.
 *   - `hang`: never answers.
 *   - `garbage`: 200 with a non-JSON body, or a non-JSON data frame when streaming.
 *   - `error-frame`: 200 whose first SSE event is a vLLM-style `{"error":{…,"code":400}}`
 *     (a 200 JSON body holding that error when not streaming).
 *   - `reset-after:<n>`: n token steps, then the socket is destroyed (at once when not streaming).
 *   - `stall-after:<n>`: n token steps, then silence with the socket kept open.
 *   - `eof-after:<n>`: n token steps, then the response ends without `[DONE]`.
 *   - `context-length`: 400 `context_length_exceeded`, param `prompt`.
 *   - `oversize`: one data frame of 1.5 MiB.  `no-choices`: a chunk/body without `choices`.
 *   - `finish-abort`: the first chunk carries vLLM's `finish_reason: "abort"`.
 * - `fake_chunk_bytes`: write the stream in slices of that many bytes (split UTF-8 tests).
 * - `fake_end_delay_ms`: wait that long between `data: [DONE]` and the end of the body.
 * - `fake_ignore_stream`: answer a stream request with a plain JSON completion.
 * - `fake_text_bytes`: (non-stream) every choice's text is `fakeBulkText(n, index)` instead.
 * - model `unauthorized` → 401, `missing-model` → 404 (per-deployment failures).
 */

/** Every body field the fake upstream reacts to. */
export const FAKE_UPSTREAM_KNOBS = [
  'fake_ttft_ms',
  'fake_itl_ms',
  'fake_fail',
  'fake_error_message',
  'fake_chunk_bytes',
  'fake_end_delay_ms',
  'fake_ignore_stream',
  'fake_text_bytes',
] as const;

const BULK_PATTERN = 'aqueduct bulk ✓ "quoted" \\ tab\t line\n 😀 ';

/**
 * Exactly `length` UTF-16 units of deterministic text for choice `index`: non-ASCII, an
 * astral character, quotes, backslashes and control characters, so that any re-encoding
 * or slicing on the way (a split surrogate pair, a lost escape) changes its hash.
 */
export function fakeBulkText(length: number, index = 0): string {
  const unit = `#${index} ${BULK_PATTERN}`;
  return unit.repeat(Math.ceil(length / unit.length)).slice(0, length);
}

export interface RecordedRequest {
  headers: IncomingHttpHeaders;
  body: Record<string, unknown>;
  /** Client port of the TCP connection: equal ports across requests mean keep-alive reuse. */
  remotePort: number | undefined;
}

export interface FakeUpstream {
  /** Base URL including `/v1`, e.g. `http://127.0.0.1:PORT/v1`. */
  url: string;
  port: number;
  requests: RecordedRequest[];
  inFlight(): number;
  maxInFlight(): number;
  close(): Promise<void>;
}

export interface FakeUpstreamOptions {
  port?: number;
  /** Keep every request for inspection (default true); benchmarks turn it off. */
  record?: boolean;
}

const SSE_HEADERS = { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache' };
const DONE = 'data: [DONE]\n\n';

export async function startFakeUpstream(opts: FakeUpstreamOptions = {}): Promise<FakeUpstream> {
  const requests: RecordedRequest[] = [];
  const record = opts.record ?? true;
  let inFlight = 0;
  let maxInFlight = 0;
  let nextId = 0;

  const server = createServer({ noDelay: true }, (req, res) => {
    inFlight += 1;
    maxInFlight = Math.max(maxInFlight, inFlight);
    res.once('close', () => {
      inFlight -= 1;
    });
    void readJson(req)
      .then((body) => {
        if (record && body !== undefined) {
          requests.push({ headers: req.headers, body, remotePort: req.socket.remotePort });
        }
        return route(req, res, body, `cmpl-fake-${nextId++}`);
      })
      .catch(() => res.destroy());
  });
  // Longer than undici's keep-alive so the client, not the server, decides when to close.
  server.keepAliveTimeout = 65_000;

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, '127.0.0.1', () => resolve());
  });
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/v1`,
    port,
    requests,
    inFlight: () => inFlight,
    maxInFlight: () => maxInFlight,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        // Hanging and stalled requests would otherwise keep close() waiting forever.
        server.closeAllConnections();
      }),
  };
}

async function route(req: IncomingMessage, res: ServerResponse, body: Record<string, unknown> | undefined, id: string) {
  if (req.method !== 'POST' || req.url?.split('?')[0] !== '/v1/completions') {
    return sendError(res, 404, `Invalid URL (${req.method ?? '?'} ${req.url ?? ''})`, 'invalid_request_error');
  }
  if (body === undefined) {
    return sendError(res, 400, 'We could not parse the JSON body of your request.', 'invalid_request_error');
  }
  const model = typeof body.model === 'string' ? body.model : '';
  if (model === 'unauthorized') {
    const key = (req.headers.authorization ?? '').replace(/^Bearer\s+/i, '');
    // Like OpenAI, the message echoes the key: the gateway must never relay it.
    return sendError(res, 401, `Incorrect API key provided: ${key}.`, 'invalid_request_error', null, 'invalid_api_key');
  }
  if (model === 'missing-model') {
    return sendError(
      res,
      404,
      `The model \`${model}\` does not exist.`,
      'invalid_request_error',
      null,
      'model_not_found',
    );
  }
  const fail = typeof body.fake_fail === 'string' ? body.fake_fail : '';
  const [kind = '', arg = ''] = fail.split(':');
  if (kind === 'status') {
    const status = Number(arg);
    const message = typeof body.fake_error_message === 'string' ? body.fake_error_message : `fake failure ${status}`;
    return sendError(res, status, message, status === 429 ? 'requests' : 'invalid_request_error', null, null);
  }
  if (kind === 'context-length') {
    const message = "This model's maximum context length is 4096 tokens, however you requested 5000 tokens.";
    return sendError(res, 400, message, 'invalid_request_error', 'prompt', 'context_length_exceeded');
  }
  if (kind === 'hang') {
    return; // the request stays open until the client gives up
  }
  const plan = planCompletion(body, model, id);
  await pause(num(body.fake_ttft_ms, 0), res);
  if (res.destroyed) {
    return;
  }
  // `fake_ignore_stream` answers a stream request with a JSON body, as some servers do.
  return body.stream === true && body.fake_ignore_stream !== true
    ? streamCompletion(res, plan, kind, Number(arg), body)
    : sendCompletion(res, plan, kind, num(body.fake_text_bytes, -1));
}

interface Plan {
  head: string; // `{"id":…,"model":…,` shared by every chunk of the response
  tokens: string[][]; // per choice index
  finish: ('stop' | 'length')[];
  usage: { prompt_tokens: number; completion_tokens: number; total_tokens: number };
  itlMs: number;
}

function planCompletion(body: Record<string, unknown>, model: string, id: string): Plan {
  const prompts = promptWords(body.prompt);
  const n = num(body.n, 1);
  const maxTokens = body.max_tokens === null ? 16 : num(body.max_tokens, 16);
  const tokens: string[][] = [];
  const finish: ('stop' | 'length')[] = [];
  let promptTokens = 0;
  let completionTokens = 0;
  for (const words of prompts) {
    promptTokens += words.length;
    const all = [' echo:', ...words.map((w) => ` ${w}`)];
    for (let c = 0; c < n; c++) {
      const cut = all.slice(0, maxTokens);
      tokens.push(cut);
      finish.push(cut.length < all.length ? 'length' : 'stop');
      completionTokens += cut.length;
    }
  }
  const created = Math.floor(Date.now() / 1000);
  return {
    head: `{"id":"${id}","object":"text_completion","created":${created},"model":${JSON.stringify(model)},"system_fingerprint":"fp_fake",`,
    tokens,
    finish,
    usage: {
      prompt_tokens: promptTokens,
      completion_tokens: completionTokens,
      total_tokens: promptTokens + completionTokens,
    },
    itlMs: num(body.fake_itl_ms, 0),
  };
}

async function sendCompletion(res: ServerResponse, plan: Plan, kind: string, textBytes: number): Promise<void> {
  if (kind === 'reset-after') {
    res.socket?.destroy();
    return;
  }
  if (kind === 'stall-after') {
    return;
  }
  const steps = Math.max(1, ...plan.tokens.map((t) => t.length));
  await pause(plan.itlMs * (steps - 1), res);
  if (res.destroyed) {
    return;
  }
  const finish = (index: number) => (kind === 'finish-abort' ? 'abort' : (plan.finish[index] ?? 'stop'));
  const text = (t: string[], index: number) => (textBytes >= 0 ? fakeBulkText(textBytes, index) : t.join(''));
  const choices = plan.tokens.map((t, index) => choiceJson(index, text(t, index), finish(index)));
  let body = `${plan.head}"choices":[${choices.join(',')}],"usage":${JSON.stringify(plan.usage)}}`;
  if (kind === 'garbage') {
    body = 'this is not json';
  } else if (kind === 'error-frame') {
    body = '{"error":{"message":"boom","type":"BadRequestError","param":null,"code":400}}';
  } else if (kind === 'no-choices') {
    body = `${plan.head}"usage":${JSON.stringify(plan.usage)}}`;
  } else if (kind === 'eof-after') {
    body = body.slice(0, body.length >> 1);
  }
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(body);
}

async function streamCompletion(
  res: ServerResponse,
  plan: Plan,
  kind: string,
  failAfter: number,
  body: Record<string, unknown>,
): Promise<void> {
  const sliceBytes = num(body.fake_chunk_bytes, 0);
  const write = sliceBytes > 0 ? (s: string) => writeSliced(res, s, sliceBytes) : (s: string) => writeOrDrain(res, s);
  res.writeHead(200, SSE_HEADERS);
  const special = specialStream(plan, kind);
  if (special !== undefined) {
    res.end(special);
    return;
  }
  const includeUsage = isIncludeUsage(body.stream_options);
  const tail = includeUsage ? '],"usage":null}\n\n' : ']}\n\n';
  const steps = Math.max(1, ...plan.tokens.map((t) => t.length));
  for (let step = 0; step < steps; step++) {
    if (step > 0) {
      await pause(plan.itlMs, res);
    }
    if (res.destroyed) {
      return;
    }
    if (step === failAfter) {
      if (kind === 'reset-after') {
        res.socket?.destroy();
        return;
      }
      if (kind === 'stall-after') {
        return; // silent, socket open: the client's idle timer must notice
      }
      if (kind === 'eof-after') {
        res.end();
        return;
      }
    }
    let out = '';
    plan.tokens.forEach((tokens, index) => {
      if (step < tokens.length || (step === 0 && tokens.length === 0)) {
        const last = step >= tokens.length - 1;
        const finish = kind === 'finish-abort' ? 'abort' : last ? (plan.finish[index] ?? 'stop') : null;
        out += `data: ${plan.head}"choices":[${choiceJson(index, tokens[step] ?? '', finish)}${tail}`;
      }
    });
    await write(out);
  }
  if (includeUsage) {
    await write(`data: ${plan.head}"choices":[],"usage":${JSON.stringify(plan.usage)}}\n\n`);
  }
  const endDelay = num(body.fake_end_delay_ms, 0);
  if (endDelay > 0) {
    // Like uvicorn, which writes the end of the chunked body separately from the last event.
    await write(DONE);
    await pause(endDelay, res);
    res.end();
    return;
  }
  res.end(DONE);
}

/** The whole body of the knobs that replace the normal stream, or undefined. */
function specialStream(plan: Plan, kind: string): string | undefined {
  switch (kind) {
    case 'garbage':
      return `data: this is not json\n\n${DONE}`;
    case 'error-frame':
      // vLLM sends the error frame and then still [DONE].
      return `data: {"error":{"message":"boom","type":"BadRequestError","param":null,"code":400}}\n\n${DONE}`;
    case 'oversize':
      return `data: ${plan.head}"choices":[${choiceJson(0, 'x'.repeat(1.5 * 1024 * 1024), null)}]}\n\n${DONE}`;
    case 'no-choices':
      return `data: ${plan.head}"object2":"x"}\n\n${DONE}`;
    default:
      return undefined;
  }
}

/** vLLM-style choice, extras included, so that clients' normalisation is exercised. */
function choiceJson(index: number, text: string, finish: string | null): string {
  const f = finish === null ? 'null' : `"${finish}"`;
  return `{"index":${index},"text":${JSON.stringify(text)},"logprobs":null,"finish_reason":${f},"stop_reason":null}`;
}

function promptWords(prompt: unknown): string[][] {
  const words = (s: string) => s.split(/\s+/).filter((w) => w !== '');
  const ids = (a: unknown[]) => a.map((k) => `t${String(k)}`);
  if (typeof prompt === 'string') {
    return [words(prompt)];
  }
  if (Array.isArray(prompt) && prompt.length > 0) {
    if (typeof prompt[0] === 'number') {
      return [ids(prompt)];
    }
    return prompt.map((p: unknown) => (typeof p === 'string' ? words(p) : Array.isArray(p) ? ids(p) : []));
  }
  return [['<|endoftext|>']];
}

function sendError(
  res: ServerResponse,
  status: number,
  message: string,
  type: string,
  param: string | null = null,
  code: string | null = null,
): void {
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (status === 429) {
    headers['retry-after'] = '1';
  }
  res.writeHead(status, headers);
  res.end(JSON.stringify({ error: { message, type, param, code } }));
}

/** Writes, waiting for 'drain' when the client reads slowly, so memory stays bounded. */
function writeOrDrain(res: ServerResponse, text: string): Promise<void> | void {
  if (res.write(text) || res.destroyed) {
    return;
  }
  return new Promise((resolve) => {
    const done = () => {
      res.off('drain', done);
      res.off('close', done);
      resolve();
    };
    res.once('drain', done);
    res.once('close', done);
  });
}

async function writeSliced(res: ServerResponse, text: string, size: number): Promise<void> {
  const bytes = Buffer.from(text);
  for (let i = 0; i < bytes.length && !res.destroyed; i += size) {
    res.write(bytes.subarray(i, i + size));
    // Separate turns of the event loop so the slices leave as separate writes.
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
}

/** Waits `ms`, or less if the client goes away (so no timer outlives its request for long). */
function pause(ms: number, res: ServerResponse): Promise<void> {
  if (ms <= 0 || res.destroyed) {
    return Promise.resolve();
  }
  return new Promise((resolve) => {
    const done = () => {
      clearTimeout(timer);
      res.off('close', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    res.once('close', done);
  });
}

function readJson(req: IncomingMessage): Promise<Record<string, unknown> | undefined> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    req.on('data', (b: Buffer) => parts.push(b));
    req.once('error', reject);
    req.once('end', () => {
      try {
        const v: unknown = JSON.parse(Buffer.concat(parts).toString('utf8'));
        resolve(typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined);
      } catch {
        resolve(undefined);
      }
    });
  });
}

function isIncludeUsage(v: unknown): boolean {
  return typeof v === 'object' && v !== null && (v as { include_usage?: unknown }).include_usage === true;
}

function num(v: unknown, fallback: number): number {
  return typeof v === 'number' && Number.isFinite(v) ? v : fallback;
}
