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
  revoked: boolean;
}

export interface TokenCreateOptions {
  name: string;
  models?: string[] | null;
  requests_per_minute?: number | null;
  input_tokens_per_minute?: number | null;
  output_tokens_per_minute?: number | null;
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
