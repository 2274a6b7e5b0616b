/** The parts of the OpenAI completions wire format that gateway and worker both touch. */

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

/** One choice fragment: a whole choice in a response, a delta in a stream chunk. */
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

export interface OpenAIErrorBody {
  message: string;
  type: string;
  param: string | null;
  code: string | null;
}
