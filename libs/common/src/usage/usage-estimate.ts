/**
 * Token counts when the backend reported none (a stream cut short by a disconnect, an
 * upstream that sends no usage, a worker lost mid-stream). Token-id prompts are exact; text
 * uses the common ~4 characters per token rule. Records say when their usage was estimated.
 * Worker and gateway count the same way, so a record reads the same whoever wrote it.
 */
export function estimatePromptTokens(prompt: unknown): number {
  if (typeof prompt === 'string') {
    return Math.ceil(prompt.length / 4);
  }
  if (!Array.isArray(prompt)) {
    return 0;
  }
  return prompt.reduce<number>((sum, p) => {
    if (typeof p === 'number') {
      return sum + 1;
    }
    return sum + (Array.isArray(p) ? p.length : estimatePromptTokens(p));
  }, 0);
}

/** Output produced (or relayed) so far: text pieces of streamed chunks, and characters. */
export interface OutputCount {
  pieces: number;
  chars: number;
}

/** A stream is charged one token per text piece; a whole result by its characters. */
export function estimateCompletionTokens(count: OutputCount, stream: boolean): number {
  return stream ? count.pieces : Math.ceil(count.chars / 4);
}
