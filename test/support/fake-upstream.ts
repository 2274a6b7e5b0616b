import { createServer, type IncomingHttpHeaders, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * A real HTTP server speaking the OpenAI `/v1/completions`, `/v1/chat/completions` and
 * `/v1/embeddings` protocols, for tests and for the benchmark (so it is kept cheap per
 * request). The text is deterministic: `" echo:"` then `" " + word` per prompt word (chat:
 * per word of the last user message), so every client can check it received its own answer.
 * Chat answers with tool calls when `tool_choice` names a function (or is `required`: the
 * first tool), see {@link fakeToolCalls}; embeddings are {@link fakeEmbedding}.
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
 * - `fake_tool_calls`: (chat) that many tool calls (to the request's tools in turn) whenever the
 *   request has tools and `tool_choice` is not `none`, `auto` included.
 * - model `unauthorized` → 401, `missing-model` → 404 (per-deployment failures).
 *
 * Chat and embeddings take the same knobs where they make sense: `context-length` names
 * `messages` / `input`; `no-choices` leaves out `choices` / `data`; embeddings answer
 * `reset-after`, `stall-after` and `eof-after` like a non-stream completion.
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
  'fake_tool_calls',
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
  /** The request path, e.g. `/v1/chat/completions`. */
  path: string;
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
  /** Listen backlog (Node's default 511 overflows when thousands of streams connect at once). */
  backlog?: number;
  /**
   * A model server's fixed capacity (vLLM's `--max-num-seqs`): at most this many requests are
   * served at once, the others wait in arrival order until one ends. Unlimited when unset.
   */
  maxParallel?: number;
}

const SSE_HEADERS = { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache' };
const DONE = 'data: [DONE]\n\n';

export async function startFakeUpstream(opts: FakeUpstreamOptions = {}): Promise<FakeUpstream> {
  const requests: RecordedRequest[] = [];
  const record = opts.record ?? true;
  let inFlight = 0;
  let maxInFlight = 0;
  let nextId = 0;
  const capacity = new Capacity(opts.maxParallel ?? Infinity);

  const server = createServer({ noDelay: true }, (req, res) => {
    void capacity.take(res).then(() => serve(req, res));
  });
  const serve = (req: IncomingMessage, res: ServerResponse) => {
    inFlight += 1;
    maxInFlight = Math.max(maxInFlight, inFlight);
    res.once('close', () => {
      inFlight -= 1;
      capacity.give();
    });
    void readJson(req)
      .then((body) => {
        if (record && body !== undefined) {
          requests.push({
            path: req.url?.split('?')[0] ?? '',
            headers: req.headers,
            body,
            remotePort: req.socket.remotePort,
          });
        }
        return route(req, res, body, nextId++);
      })
      .catch(() => res.destroy());
  };
  // Longer than undici's keep-alive so the client, not the server, decides when to close.
  server.keepAliveTimeout = 65_000;

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen({ port: opts.port ?? 0, host: '127.0.0.1', backlog: opts.backlog }, () => resolve());
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

/** Slots of a fixed-capacity server; a request whose client left while it waited gives up its turn. */
class Capacity {
  private free: number;
  private readonly waiting: { res: ServerResponse; go: () => void }[] = [];

  constructor(slots: number) {
    this.free = slots;
  }

  take(res: ServerResponse): Promise<void> {
    if (this.free > 0) {
      this.free -= 1;
      return Promise.resolve();
    }
    return new Promise((go) => this.waiting.push({ res, go }));
  }

  give(): void {
    let next = this.waiting.shift();
    while (next !== undefined && next.res.destroyed) {
      next = this.waiting.shift();
    }
    if (next === undefined) {
      this.free += 1;
    } else {
      next.go();
    }
  }
}

type Operation = 'completion' | 'chat' | 'embedding';

const ROUTES: Readonly<Record<string, Operation>> = {
  '/v1/completions': 'completion',
  '/v1/chat/completions': 'chat',
  '/v1/embeddings': 'embedding',
};

/** The parameter a context-length failure names, per operation. */
const CONTEXT_PARAM: Readonly<Record<Operation, string>> = {
  completion: 'prompt',
  chat: 'messages',
  embedding: 'input',
};

async function route(req: IncomingMessage, res: ServerResponse, body: Record<string, unknown> | undefined, n: number) {
  const op = req.method === 'POST' ? ROUTES[req.url?.split('?')[0] ?? ''] : undefined;
  if (op === undefined) {
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
    return sendError(res, 400, message, 'invalid_request_error', CONTEXT_PARAM[op], 'context_length_exceeded');
  }
  if (kind === 'hang') {
    return; // the request stays open until the client gives up
  }
  if (op === 'chat') {
    return routeChat(res, body, model, `chatcmpl-fake-${n}`, kind, Number(arg));
  }
  if (op === 'embedding') {
    return routeEmbeddings(res, body, model, kind);
  }
  const plan = planCompletion(body, model, `cmpl-fake-${n}`);
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
  endWhole(res, kind, plan.head, `"choices":[${choices.join(',')}],`, JSON.stringify(plan.usage));
}

/**
 * Ends a non-stream 200: `head + choices + usage`, or what a `fake_fail` kind makes of it
 * (the same for completions and chat).
 */
function endWhole(res: ServerResponse, kind: string, head: string, choices: string, usage: string): void {
  let body = `${head}${choices}"usage":${usage}}`;
  if (kind === 'garbage') {
    body = 'this is not json';
  } else if (kind === 'error-frame') {
    body = '{"error":{"message":"boom","type":"BadRequestError","param":null,"code":400}}';
  } else if (kind === 'no-choices') {
    body = `${head}"usage":${usage}}`;
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

// ---- chat completions ------------------------------------------------------------------

/** One tool call of a fake chat answer. */
export interface FakeToolCall {
  id: string;
  name: string;
  /** A JSON object, as text. */
  arguments: string;
}

/** Characters of tool-call `arguments` per stream chunk: a call's arguments always span several. */
export const FAKE_ARGUMENT_PIECE = 8;

/** The text of a message's `content`: a string, or its text parts joined by spaces. */
export function chatContentText(content: unknown): string {
  if (typeof content === 'string') {
    return content;
  }
  if (!Array.isArray(content)) {
    return '';
  }
  const texts: string[] = [];
  for (const part of content) {
    if (isRecord(part) && part.type === 'text' && typeof part.text === 'string') {
      texts.push(part.text);
    }
  }
  return texts.join(' ');
}

/** The text a chat request is answered from: the content of its last user message ('' if none). */
export function lastUserText(messages: unknown): string {
  if (!Array.isArray(messages)) {
    return '';
  }
  for (let i = messages.length - 1; i >= 0; i--) {
    const m: unknown = messages[i];
    if (isRecord(m) && m.role === 'user') {
      return chatContentText(m.content);
    }
  }
  return '';
}

/**
 * The tool calls the fake upstream answers choice `index` of `body` with ([] for a text
 * answer): one call to the function `tool_choice` names; with `tool_choice: "required"`
 * one call to the first tool; `fake_tool_calls: k` makes k calls to the tools in turn.
 * Arguments: `{"words":[…words of the last user message],"call":i}`.
 */
export function fakeToolCalls(body: Record<string, unknown>, index = 0): FakeToolCall[] {
  const names: string[] = [];
  for (const t of Array.isArray(body.tools) ? (body.tools as unknown[]) : []) {
    if (isRecord(t) && isRecord(t.function) && typeof t.function.name === 'string') {
      names.push(t.function.name);
    }
  }
  const choice = body.tool_choice;
  const count = num(body.fake_tool_calls, 0);
  let chosen: string[] = [];
  if (isRecord(choice) && isRecord(choice.function) && typeof choice.function.name === 'string') {
    chosen = [choice.function.name];
  } else if (names.length > 0 && choice !== 'none' && (count > 0 || choice === 'required')) {
    chosen = Array.from({ length: Math.max(1, count) }, (_, i) => names[i % names.length] ?? '');
  }
  const words = splitWords(lastUserText(body.messages));
  return chosen.map((name, i) => ({
    id: `call_fake_${index}_${i}`,
    name,
    arguments: JSON.stringify({ words, call: i }),
  }));
}

interface ChatChoicePlan {
  /** Stream deltas after the role chunk, as JSON text, with the token each carries (for logprobs). */
  steps: { delta: string; token: string | null }[];
  /** A separate role chunk before the first step (text answers; a tool answer's first step has the role). */
  roleChunk: boolean;
  content: string | null;
  calls: FakeToolCall[];
  finish: 'stop' | 'length' | 'tool_calls';
}

interface ChatPlan {
  id: string;
  created: number;
  model: string;
  choices: ChatChoicePlan[];
  usage: { prompt_tokens: number; completion_tokens: number; total_tokens: number };
  itlMs: number;
  /** `top_logprobs` alternatives when `logprobs: true`, else null. */
  logprobs: number | null;
}

function planChat(body: Record<string, unknown>, model: string, id: string): ChatPlan {
  const words = splitWords(lastUserText(body.messages));
  const n = num(body.n, 1);
  const limit = num(body.max_completion_tokens, num(body.max_tokens, Number.POSITIVE_INFINITY));
  let promptTokens = 0;
  for (const m of Array.isArray(body.messages) ? (body.messages as unknown[]) : []) {
    promptTokens += isRecord(m) ? splitWords(chatContentText(m.content)).length : 0;
  }
  const all = [' echo:', ...words.map((w) => ` ${w}`)];
  const choices: ChatChoicePlan[] = [];
  let completionTokens = 0;
  for (let index = 0; index < n; index++) {
    const calls = fakeToolCalls(body, index);
    if (calls.length > 0) {
      const steps: ChatChoicePlan['steps'] = [];
      calls.forEach((call, i) => {
        const head = `"tool_calls":[{"index":${i},"id":"${call.id}","type":"function","function":{"name":${JSON.stringify(call.name)},"arguments":""}}]`;
        steps.push({ delta: i === 0 ? `{"role":"assistant","content":null,${head}}` : `{${head}}`, token: null });
        for (let at = 0; at < call.arguments.length; at += FAKE_ARGUMENT_PIECE) {
          const piece = JSON.stringify(call.arguments.slice(at, at + FAKE_ARGUMENT_PIECE));
          steps.push({ delta: `{"tool_calls":[{"index":${i},"function":{"arguments":${piece}}}]}`, token: null });
          completionTokens += 1;
        }
      });
      choices.push({ steps, roleChunk: false, content: null, calls, finish: 'tool_calls' });
      continue;
    }
    const cut = all.slice(0, limit);
    completionTokens += cut.length;
    choices.push({
      steps: cut.map((t) => ({ delta: `{"content":${JSON.stringify(t)}}`, token: t })),
      roleChunk: true,
      content: cut.join(''),
      calls: [],
      finish: cut.length < all.length ? 'length' : 'stop',
    });
  }
  const top = num(body.top_logprobs, 0);
  return {
    id,
    created: Math.floor(Date.now() / 1000),
    model,
    choices,
    usage: {
      prompt_tokens: promptTokens,
      completion_tokens: completionTokens,
      total_tokens: promptTokens + completionTokens,
    },
    itlMs: num(body.fake_itl_ms, 0),
    logprobs: body.logprobs === true ? top : null,
  };
}

/** OpenAI's logprobs entry of one token, with `top` alternatives (the token itself first). */
function tokenLogprob(token: string, position: number, top: number): string {
  const logprob = -Math.round(((position % 9) + 1) * 1000) / 10000;
  const entry = (t: string, lp: number) =>
    `{"token":${JSON.stringify(t)},"logprob":${lp},"bytes":[${[...Buffer.from(t)].join(',')}]`;
  const alternatives = Array.from({ length: top }, (_, j) =>
    j === 0 ? `${entry(token, logprob)}}` : `${entry(`${token}~${j}`, logprob - j)}}`,
  );
  return `${entry(token, logprob)},"top_logprobs":[${alternatives.join(',')}]}`;
}

async function routeChat(
  res: ServerResponse,
  body: Record<string, unknown>,
  model: string,
  id: string,
  kind: string,
  failAfter: number,
): Promise<void> {
  if (!Array.isArray(body.messages)) {
    return sendError(res, 400, "Missing required parameter: 'messages'.", 'invalid_request_error', 'messages');
  }
  const plan = planChat(body, model, id);
  await pause(num(body.fake_ttft_ms, 0), res);
  if (res.destroyed) {
    return;
  }
  return body.stream === true && body.fake_ignore_stream !== true
    ? streamChat(res, plan, kind, failAfter, body)
    : sendChat(res, plan, kind, num(body.fake_text_bytes, -1));
}

function chatHead(plan: ChatPlan, object: string): string {
  return `{"id":"${plan.id}","object":"${object}","created":${plan.created},"model":${JSON.stringify(plan.model)},"system_fingerprint":"fp_fake",`;
}

async function sendChat(res: ServerResponse, plan: ChatPlan, kind: string, textBytes: number): Promise<void> {
  if (kind === 'reset-after') {
    res.socket?.destroy();
    return;
  }
  if (kind === 'stall-after') {
    return;
  }
  const steps = Math.max(1, ...plan.choices.map((c) => c.steps.length));
  await pause(plan.itlMs * (steps - 1), res);
  if (res.destroyed) {
    return;
  }
  const choices = plan.choices.map((c, index) => {
    const content = textBytes >= 0 && c.calls.length === 0 ? fakeBulkText(textBytes, index) : c.content;
    const calls = c.calls.map(
      (t) =>
        `{"id":"${t.id}","type":"function","function":{"name":${JSON.stringify(t.name)},"arguments":${JSON.stringify(t.arguments)}}}`,
    );
    const message = `{"role":"assistant","content":${JSON.stringify(content)},"refusal":null${calls.length > 0 ? `,"tool_calls":[${calls.join(',')}]` : ''}}`;
    let logprobs = 'null';
    if (plan.logprobs !== null) {
      const entries = c.steps.flatMap((s, i) =>
        s.token === null ? [] : [tokenLogprob(s.token, i, plan.logprobs ?? 0)],
      );
      logprobs = `{"content":[${entries.join(',')}],"refusal":null}`;
    }
    const finish = kind === 'finish-abort' ? 'abort' : c.finish;
    return `{"index":${index},"message":${message},"logprobs":${logprobs},"finish_reason":"${finish}","stop_reason":null}`;
  });
  endWhole(
    res,
    kind,
    chatHead(plan, 'chat.completion'),
    `"choices":[${choices.join(',')}],`,
    JSON.stringify(plan.usage),
  );
}

async function streamChat(
  res: ServerResponse,
  plan: ChatPlan,
  kind: string,
  failAfter: number,
  body: Record<string, unknown>,
): Promise<void> {
  const sliceBytes = num(body.fake_chunk_bytes, 0);
  const write = sliceBytes > 0 ? (s: string) => writeSliced(res, s, sliceBytes) : (s: string) => writeOrDrain(res, s);
  res.writeHead(200, SSE_HEADERS);
  const head = chatHead(plan, 'chat.completion.chunk');
  const special = specialChatStream(head, kind);
  if (special !== undefined) {
    res.end(special);
    return;
  }
  const tail = isIncludeUsage(body.stream_options) ? '],"usage":null}\n\n' : ']}\n\n';
  const chunk = (index: number, delta: string, logprobs: string, finish: string | null) => {
    const f = kind === 'finish-abort' ? '"abort"' : finish === null ? 'null' : `"${finish}"`;
    return `data: ${head}"choices":[{"index":${index},"delta":${delta},"logprobs":${logprobs},"finish_reason":${f}}${tail}`;
  };
  const steps = Math.max(1, ...plan.choices.map((c) => c.steps.length));
  for (let step = 0; step <= steps; step++) {
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
        return;
      }
      if (kind === 'eof-after') {
        res.end();
        return;
      }
    }
    let out = '';
    plan.choices.forEach((c, index) => {
      if (step === steps) {
        out += chunk(index, '{}', 'null', c.finish);
        return;
      }
      if (step === 0 && c.roleChunk) {
        out += chunk(index, '{"role":"assistant","content":""}', 'null', null);
      }
      const s = c.steps[step];
      if (s !== undefined) {
        const lp =
          plan.logprobs === null || s.token === null
            ? 'null'
            : `{"content":[${tokenLogprob(s.token, step, plan.logprobs)}],"refusal":null}`;
        out += chunk(index, s.delta, lp, null);
      }
    });
    await write(out);
  }
  if (isIncludeUsage(body.stream_options)) {
    await write(`data: ${head}"choices":[],"usage":${JSON.stringify(plan.usage)}}\n\n`);
  }
  const endDelay = num(body.fake_end_delay_ms, 0);
  if (endDelay > 0) {
    await write(DONE);
    await pause(endDelay, res);
    res.end();
    return;
  }
  res.end(DONE);
}

function specialChatStream(head: string, kind: string): string | undefined {
  const big = JSON.stringify('x'.repeat(1.5 * 1024 * 1024));
  switch (kind) {
    case 'garbage':
      return `data: this is not json\n\n${DONE}`;
    case 'error-frame':
      return `data: {"error":{"message":"boom","type":"BadRequestError","param":null,"code":400}}\n\n${DONE}`;
    case 'oversize':
      return `data: ${head}"choices":[{"index":0,"delta":{"role":"assistant","content":${big}},"logprobs":null,"finish_reason":null}]}\n\n${DONE}`;
    case 'no-choices':
      return `data: ${head}"object2":"x"}\n\n${DONE}`;
    default:
      return undefined;
  }
}

// ---- embeddings ------------------------------------------------------------------------

/** Dimensions of a fake upstream embedding when the request has no `dimensions`. */
export const FAKE_EMBEDDING_DIMENSIONS = 16;

/**
 * The fake upstream's embedding of one input (a string or one token-id array): a
 * deterministic unit vector of float32 values (so that float and base64 carry exactly the
 * same numbers), seeded by the input.
 */
export function fakeEmbedding(input: string | number[], dimensions = FAKE_EMBEDDING_DIMENSIONS): number[] {
  let h = 0x811c9dc5;
  const text = JSON.stringify(input);
  for (let i = 0; i < text.length; i++) {
    h = Math.imul(h ^ text.charCodeAt(i), 0x01000193) >>> 0;
  }
  let x = h || 1;
  const raw: number[] = [];
  for (let i = 0; i < dimensions; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    raw.push(x / 2 ** 31 - 1);
  }
  const norm = Math.hypot(...raw) || 1;
  return raw.map((v) => Math.fround(v / norm));
}

/** Each input of an embeddings request: strings, or token-id arrays; undefined when malformed. */
function embeddingInputs(input: unknown): (string | number[])[] | undefined {
  if (typeof input === 'string') {
    return [input];
  }
  if (!Array.isArray(input) || input.length === 0) {
    return undefined;
  }
  if (input.every((v) => typeof v === 'number')) {
    return [input];
  }
  if (input.every((v) => typeof v === 'string') || input.every((v) => Array.isArray(v))) {
    return input as (string | number[])[];
  }
  return undefined;
}

async function routeEmbeddings(
  res: ServerResponse,
  body: Record<string, unknown>,
  model: string,
  kind: string,
): Promise<void> {
  const inputs = embeddingInputs(body.input);
  if (inputs === undefined) {
    return sendError(res, 400, "Invalid 'input'.", 'invalid_request_error', 'input');
  }
  await pause(num(body.fake_ttft_ms, 0), res);
  if (res.destroyed) {
    return;
  }
  if (kind === 'reset-after') {
    res.socket?.destroy();
    return;
  }
  if (kind === 'stall-after') {
    return;
  }
  const dimensions = num(body.dimensions, FAKE_EMBEDDING_DIMENSIONS);
  const base64 = body.encoding_format === 'base64';
  let tokens = 0;
  const data = inputs.map((item, index) => {
    tokens += typeof item === 'string' ? splitWords(item).length : item.length;
    const vector = fakeEmbedding(item, dimensions);
    const embedding = base64 ? Buffer.from(new Float32Array(vector).buffer).toString('base64') : vector;
    return { object: 'embedding', index, embedding };
  });
  const usage = { prompt_tokens: tokens, total_tokens: tokens };
  let out = JSON.stringify({ object: 'list', data, model, usage });
  if (kind === 'garbage') {
    out = 'this is not json';
  } else if (kind === 'error-frame') {
    out = '{"error":{"message":"boom","type":"BadRequestError","param":null,"code":400}}';
  } else if (kind === 'no-choices') {
    out = JSON.stringify({ object: 'list', model, usage });
  } else if (kind === 'eof-after') {
    out = out.slice(0, out.length >> 1);
  }
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(out);
}

function splitWords(s: string): string[] {
  return s.split(/\s+/).filter((w) => w !== '');
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
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
