import type { OperationName } from '../contracts/openai';
import { CHAT } from './chat.operation';
import { COMPLETION } from './completion.operation';
import { EMBEDDING } from './embedding.operation';
import type { OperationSpec } from './operation';

export { CHAT } from './chat.operation';
export { COMPLETION, promptCount, promptIssue } from './completion.operation';
export { EMBEDDING } from './embedding.operation';
export { jobParams, type OperationSpec, type ParsedRequest, type ResponseMeta } from './operation';

/** Every operation by name: what a job's `op` resolves to on both sides. */
export const OPERATIONS: Readonly<Record<OperationName, OperationSpec>> = {
  completion: COMPLETION,
  chat: CHAT,
  embedding: EMBEDDING,
};
