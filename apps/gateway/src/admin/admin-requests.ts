import { ApiError, parseDurationSeconds, TOKEN_PRIORITIES, type TokenCreateOptions } from '@app/common';
import { z } from 'zod';

const limit = z.number().int().min(0).nullish();

/** `POST /admin/tokens`: the CLI's options, in JSON. */
const createTokenSchema = z.strictObject({
  name: z.string().min(1).max(200),
  models: z.array(z.string().min(1)).min(1).nullish(),
  requests_per_minute: limit,
  input_tokens_per_minute: limit,
  output_tokens_per_minute: limit,
  max_parallel_requests: z.number().int().min(1).max(1_000_000).nullish(),
  priority: z.enum(TOKEN_PRIORITIES).nullish(),
  /** Seconds, or a duration such as "30d". */
  expires_in: z.union([z.number().positive(), z.string().min(1)]).nullish(),
});

export function parseCreateToken(body: unknown): TokenCreateOptions {
  const r = createTokenSchema.safeParse(body);
  if (!r.success) {
    const issue = r.error.issues[0];
    const param = typeof issue?.path[0] === 'string' ? issue.path[0] : null;
    throw ApiError.invalid(`Invalid value for '${param ?? 'body'}': ${issue?.message ?? 'invalid'}.`, param);
  }
  let expiresIn: number | null = null;
  if (typeof r.data.expires_in === 'string') {
    try {
      expiresIn = parseDurationSeconds(r.data.expires_in);
    } catch (err) {
      throw ApiError.invalid((err as Error).message, 'expires_in');
    }
  } else if (typeof r.data.expires_in === 'number') {
    expiresIn = r.data.expires_in;
  }
  return { ...r.data, expires_in: expiresIn };
}

/** `?since=1h` (a duration back from now) for the usage query; default one day. */
export function parseSince(since: unknown, now: number): number {
  if (since === undefined || since === '') {
    return now - 86_400_000;
  }
  if (typeof since !== 'string') {
    throw ApiError.invalid("Invalid value for 'since': expected a duration such as 1h.", 'since');
  }
  try {
    return now - parseDurationSeconds(since) * 1000;
  } catch (err) {
    throw ApiError.invalid((err as Error).message, 'since');
  }
}
