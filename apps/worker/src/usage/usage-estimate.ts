/**
 * Token counts when the backend reported none (a stream cut short by a disconnect, an
 * upstream that sends no usage). Token-id prompts are exact; text uses the common
 * ~4 characters per token rule. Records say when their usage was estimated.
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
