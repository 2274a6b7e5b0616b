/** A token as stored in Redis. The plaintext key is never stored, only its SHA-256. */
export interface TokenRecord {
  id: string;
  name: string;
  /** `sk-aq-...abcd`: enough to recognise a key, useless to an attacker. */
  preview: string;
  /** Unix seconds. */
  created_at: number;
  expires_at: number | null;
  /** Allow-list of model names; null = every model. */
  models: string[] | null;
  requests_per_minute: number | null;
  input_tokens_per_minute: number | null;
  output_tokens_per_minute: number | null;
  /** Requests admitted at once (waiting or running); null = AQUEDUCT_DEFAULT_MAX_PARALLEL. */
  max_parallel_requests: number | null;
  /** Scheduling class; stored now, used by the queue scheduler. */
  priority: TokenPriority;
  revoked: boolean;
}

export const TOKEN_PRIORITIES = ['high', 'normal', 'low'] as const;
export type TokenPriority = (typeof TOKEN_PRIORITIES)[number];

export interface TokenCreateOptions {
  name: string;
  models?: string[] | null;
  requests_per_minute?: number | null;
  input_tokens_per_minute?: number | null;
  output_tokens_per_minute?: number | null;
  max_parallel_requests?: number | null;
  priority?: TokenPriority | null;
  /** Seconds from now; null or undefined = never expires. */
  expires_in?: number | null;
}

export type TokenState = 'active' | 'expired' | 'revoked';

export function tokenState(t: TokenRecord, nowMs: number): TokenState {
  if (t.revoked) {
    return 'revoked';
  }
  if (t.expires_at !== null && t.expires_at * 1000 <= nowMs) {
    return 'expired';
  }
  return 'active';
}

/**
 * Records written before a field existed lack it: fill the defaults once, where records are
 * read, so the rest of the code can rely on every field.
 */
export function normalizeToken(raw: Partial<TokenRecord> & Pick<TokenRecord, 'id'>): TokenRecord {
  return {
    name: '',
    preview: '',
    created_at: 0,
    expires_at: null,
    models: null,
    requests_per_minute: null,
    input_tokens_per_minute: null,
    output_tokens_per_minute: null,
    revoked: false,
    ...raw,
    max_parallel_requests: raw.max_parallel_requests ?? null,
    priority: raw.priority ?? 'normal',
  };
}
