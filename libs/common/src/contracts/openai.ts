/**
 * The parts of the OpenAI wire formats that gateway and worker both touch: text
 * completions, chat completions and embeddings.
 */

/** The operations Aqueduct serves; also the values of a model's `model_info.mode`. */
export type OperationName = 'completion' | 'chat' | 'embedding';

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

export interface Logprobs {
  tokens: string[];
  token_logprobs: (number | null)[];
  top_logprobs: (Record<string, number> | null)[] | null;
  text_offset: number[];
}

export type FinishReason = 'stop' | 'length' | 'content_filter';

/** One text-completion choice: a whole choice in a response, a delta in a stream chunk. */
export interface ChoiceDelta {
  index: number;
  text: string;
  logprobs: Logprobs | null;
  finish_reason: FinishReason | null;
}

export interface CompletionResponse {
  id: string;
  object: 'text_completion';
  created: number;
  model: string;
  system_fingerprint?: string;
  choices: ChoiceDelta[];
  usage?: Usage | null;
}

// ---- chat completions ----------------------------------------------------------------

export type ChatFinishReason = 'stop' | 'length' | 'tool_calls' | 'content_filter' | 'function_call';

export interface ChatToolCall {
  id: string;
  type: 'function';
  function: { name: string; arguments: string };
}

/** A tool call as it streams: the first delta of an `index` has id, type and name; later ones append `arguments`. */
export interface ChatToolCallDelta {
  index: number;
  id?: string;
  type?: 'function';
  function?: { name?: string; arguments?: string };
}

export interface ChatTopLogprob {
  token: string;
  logprob: number;
  bytes: number[] | null;
}

export interface ChatTokenLogprob extends ChatTopLogprob {
  top_logprobs: ChatTopLogprob[];
}

export interface ChatLogprobs {
  content: ChatTokenLogprob[] | null;
  refusal?: ChatTokenLogprob[] | null;
}

/** The assistant's message of a non-stream choice. Upstream extras (`reasoning_content`) pass through. */
export interface ChatMessage {
  role: 'assistant';
  content: string | null;
  refusal?: string | null;
  tool_calls?: ChatToolCall[];
  [extra: string]: unknown;
}

export interface ChatChoice {
  index: number;
  message: ChatMessage;
  logprobs: ChatLogprobs | null;
  finish_reason: ChatFinishReason;
}

export interface ChatDelta {
  role?: 'assistant';
  content?: string | null;
  refusal?: string | null;
  tool_calls?: ChatToolCallDelta[];
  [extra: string]: unknown;
}

/** One choice of a `chat.completion.chunk`. */
export interface ChatChunkChoice {
  index: number;
  delta: ChatDelta;
  logprobs: ChatLogprobs | null;
  finish_reason: ChatFinishReason | null;
}

// ---- embeddings ----------------------------------------------------------------------

/** `embedding` is a float array, or base64 of little-endian float32 when `encoding_format: base64`. */
export interface EmbeddingObject {
  object: 'embedding';
  index: number;
  embedding: number[] | string;
}

// ---- what travels in relay messages --------------------------------------------------

/** The choices of one stream chunk, in the wire shape of the request's operation. */
export type StreamChoice = ChoiceDelta | ChatChunkChoice;
/** One item of a non-stream result: `choices[i]` (completion, chat) or `data[i]` (embeddings). */
export type ResultItem = ChoiceDelta | ChatChoice | EmbeddingObject;

export interface OpenAIErrorBody {
  message: string;
  type: string;
  param: string | null;
  code: string | null;
}
