import cors from 'cors';
import type { RequestHandler } from 'express';

/** Browser clients may call the OpenAI-compatible API routes; admin and ops routes get no CORS. */
const API_PATH = /^\/(v1\/)?(completions|models)(\/|$)/;

export function apiCors(): RequestHandler {
  const handler = cors({
    origin: '*',
    methods: ['GET', 'POST', 'OPTIONS'],
    // Reflect whatever the SDK sends (authorization, x-stainless-*, openai-*).
    allowedHeaders: undefined,
    exposedHeaders: [
      'x-request-id',
      'retry-after',
      'retry-after-ms',
      'x-ratelimit-limit-requests',
      'x-ratelimit-remaining-requests',
      'x-ratelimit-reset-requests',
      'x-ratelimit-limit-tokens',
      'x-ratelimit-remaining-tokens',
      'x-ratelimit-reset-tokens',
    ],
    maxAge: 600,
  });
  return (req, res, next) => (API_PATH.test(req.path) ? handler(req, res, next) : next());
}
