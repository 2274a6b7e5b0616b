/**
 * What the queue dashboard shows of a job's data: the routing fields (request id, model,
 * token id, deadline, client metadata) but not the request content, and never anything
 * that looks like a credential. The job itself never holds the API key or an upstream key
 * (the gateway stores the token id; workers read upstream keys from their own config), but
 * clients may send arbitrary extra parameters, so they are scrubbed too.
 */
/** Request content of every operation: prompts, chat messages (and predicted output), embedding inputs. */
const CONTENT_KEY = /^(prompt|suffix|messages|prediction|input)$/;
const SECRET_KEY =
  /(^|[_-])(api[_-]?key|apikey|key|secret|password|passwd|authorization|auth|cookie|access[_-]?token|refresh[_-]?token|token|credentials?)$/i;
const SECRET_VALUE = /\b(sk-[A-Za-z0-9_-]{16,}|Bearer\s+\S+|Basic\s+[A-Za-z0-9+/=]{8,})/;

export function redactJobData(data: unknown): unknown {
  return scrub(data, undefined);
}

function scrub(value: unknown, key: string | undefined): unknown {
  if (key !== undefined && CONTENT_KEY.test(key)) {
    return summarize(value);
  }
  if (key !== undefined && SECRET_KEY.test(key)) {
    return '[redacted]';
  }
  if (typeof value === 'string') {
    return SECRET_VALUE.test(value) ? '[redacted]' : value;
  }
  if (Array.isArray(value)) {
    return value.map((v) => scrub(v, undefined));
  }
  if (typeof value === 'object' && value !== null) {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, scrub(v, k)]));
  }
  return value;
}

function summarize(value: unknown): string {
  if (typeof value === 'string') {
    return `[redacted: ${value.length} characters]`;
  }
  if (Array.isArray(value)) {
    return `[redacted: ${value.length} items]`;
  }
  return '[redacted]';
}
