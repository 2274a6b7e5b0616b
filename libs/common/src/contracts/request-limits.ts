/**
 * Bounds on one request, so that no token holder can make a request whose cost lands on
 * everybody (a worker stalled building 3 000 × 128 answers, a gateway holding megabytes of
 * stop sequences). The body size limit (AQUEDUCT_MAX_BODY_BYTES) bounds the rest.
 */
export const REQUEST_LIMITS = {
  /** Items of a `prompt` (or embedding `input`) array. */
  maxPrompts: 2048,
  /** len(prompt) × max(n, best_of): completions generated for one request. */
  maxChoices: 128,
  /** Characters of one `stop` sequence. */
  maxStopChars: 1_000,
  /** Characters of `suffix`. */
  maxSuffixChars: 262_144,
  /** Characters of `user` and of Aqueduct's `user_id`. */
  maxUserChars: 512,
  /** Entries of `logit_bias` (OpenAI's own bound is 300 tokens per request; vLLM has none). */
  maxLogitBias: 1_024,
  /** Messages of one chat request (a long agent conversation is far below this). */
  maxMessages: 4_096,
  /** Content parts of one chat message. */
  maxContentParts: 1_024,
  /** Entries of `tools` (OpenAI's own bound), and tool calls of one assistant message. */
  maxTools: 128,
  /** `dimensions` of an embedding request (OpenAI's largest model has 3072). */
  maxEmbeddingDimensions: 65_536,
} as const;
