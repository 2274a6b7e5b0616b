import { requestContext, type TokenRecord } from '@app/common';
import type { NextFunction, Request, RequestHandler, Response } from 'express';
import type { Level, Logger } from 'pino';
import { firstTokenAt, isAdmitted, modelLabel } from '../http/request-state';
import type { RefusalCounter } from '../usage/refusal-counter';
import type { GatewayMetrics } from './gateway-metrics';

/** The OpenAI operations' routes: their refusals are counted, their model and first token observed. */
const INFERENCE = /^\/(v1\/)?(completions|chat\/completions|embeddings)\/?$/;
/** Probes and scrapes are logged at debug level unless they fail, so they do not drown the log. */
const QUIET = /^\/(health|ready|metrics)\/?$/;
const DASHBOARD = /^\/admin\/queues(\/|$)/;

/**
 * One middleware, first in the chain after the request id: it binds the request id to
 * every log line written on the request's behalf, and when the response ends it writes
 * the request's log line, its metrics and, for a refused API request, its refusal count.
 * Log lines carry ids, names and numbers: never
 * the key, the prompt or the completion.
 */
export function httpObserver(
  logger: Logger,
  metrics: GatewayMetrics,
  refusals: RefusalCounter,
): RequestHandler {
  return (req: Request, res: Response, next: NextFunction) => {
    const started = performance.now();
    const path = req.path;
    let ended = false;
    const end = () => {
      if (ended) {
        return;
      }
      ended = true;
      const latencyMs = performance.now() - started;
      // 'close' without 'finish': the client went away before the response was complete.
      const aborted = !res.writableFinished;
      const status = aborted ? 499 : res.statusCode;
      const route = routeLabel(req, path);
      const inference = INFERENCE.test(path);
      const model = inference ? modelLabel(res) : '';
      const token = tokenId(req);
      // Reported by the stream responder when it wrote its first chunk.
      const first = firstTokenAt(res);
      const firstTokenMs = first === undefined ? undefined : first - started;
      if (inference && status >= 400 && !aborted && !isAdmitted(res)) {
        // Refused before admission: counted, never recorded (see RefusalCounter).
        refusals.count(token ?? '-', model, status);
      }
      metrics.observeRequest({ route, method: req.method, model, status: String(status) }, latencyMs / 1000);
      if (firstTokenMs !== undefined) {
        metrics.observeFirstToken(route, model, firstTokenMs / 1000);
      }
      const level: Level = status >= 500 ? 'warn' : QUIET.test(path) ? 'debug' : 'info';
      logger[level](
        {
          rid: req.rid,
          method: req.method,
          path: path.slice(0, 200),
          route,
          status,
          ...(aborted && { aborted: true, status_sent: res.headersSent ? res.statusCode : null }),
          latency_ms: Math.round(latencyMs),
          ...(firstTokenMs !== undefined && { ttft_ms: Math.round(firstTokenMs) }),
          ...(token !== undefined && { token_id: token }),
          ...(model !== '' && { model }),
        },
        'request completed',
      );
    };
    res.once('finish', end);
    res.once('close', end);
    requestContext.run({ rid: req.rid }, next);
  };
}

/** The route pattern (bounded label values), not the raw path. */
function routeLabel(req: Request, path: string): string {
  const route = (req as { route?: { path?: unknown } }).route?.path;
  if (typeof route === 'string') {
    return route;
  }
  if (INFERENCE.test(path)) {
    return path.replace(/\/$/, ''); // answered by the body parser (400/413/415)
  }
  if (DASHBOARD.test(path)) {
    return '/admin/queues';
  }
  return 'unmatched';
}

function tokenId(req: Request): string | undefined {
  const user: unknown = req.user;
  const id = typeof user === 'object' && user !== null ? (user as Partial<TokenRecord>).id : undefined;
  return typeof id === 'string' ? id : undefined;
}
