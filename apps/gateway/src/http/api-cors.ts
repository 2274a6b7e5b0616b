import cors from 'cors';
import type { RequestHandler } from 'express';
import { QUEUE_MS_HEADER } from '../inference/inference-run';

/** Browser clients may call the OpenAI-compatible API routes; admin and ops routes get no CORS. */
const API_PATH = /^\/(v1\/)?(completions|chat\/completions|embeddings|models)(\/|$)/;

/**
 * Every header the gateway sets on an API response that a browser script may need to read:
 * the request id, the retry hints, OpenAI's `x-ratelimit-*` set (requests and the combined
 * tokens budget, plus our separate input and output token budgets), and the `x-aqueduct-*`
 * headers. CORS hides all but a few safelisted headers from scripts unless they are listed here.
 */
export const EXPOSED_HEADERS: readonly string[] = [
  'x-request-id',
  'retry-after',
  'retry-after-ms',
  ...['requests', 'tokens', 'input-tokens', 'output-tokens'].flatMap((budget) =>
    ['limit', 'remaining', 'reset'].map((field) => `x-ratelimit-${field}-${budget}`),
  ),
  // Milliseconds the request waited for capacity (the scheduler's queue).
  QUEUE_MS_HEADER,
];

/** The methods of each API route, for the `Allow` header of OPTIONS (as every known route answers it). */
function allowFor(path: string): string {
  return /^\/(v1\/)?models(\/|$)/.test(path) ? 'GET, HEAD, OPTIONS' : 'POST, OPTIONS';
}

export function apiCors(): RequestHandler {
  const handler = cors({
    origin: '*',
    methods: ['GET', 'POST', 'OPTIONS'],
    // Reflect whatever the SDK sends (authorization, x-stainless-*, openai-*).
    allowedHeaders: undefined,
    exposedHeaders: [...EXPOSED_HEADERS],
    maxAge: 600,
  });
  return (req, res, next) => {
    if (!API_PATH.test(req.path)) {
      next();
      return;
    }
    if (req.method === 'OPTIONS') {
      // cors() answers it (204), preflight or not; `Allow` as on every other known route.
      res.setHeader('allow', allowFor(req.path));
    }
    handler(req, res, next);
  };
}
