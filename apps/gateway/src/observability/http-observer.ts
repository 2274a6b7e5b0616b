import { requestContext, type RouterConfig, type TokenRecord } from '@app/common';
import type { NextFunction, Request, RequestHandler, Response } from 'express';
import type { Level, Logger } from 'pino';
import { isAdmitted } from '../http/admission-state';
import type { RefusalCounter } from '../usage/refusal-counter';
import type { GatewayMetrics } from './gateway-metrics';

const COMPLETIONS = /^\/(v1\/)?completions\/?$/;
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
  router: RouterConfig,
  refusals: RefusalCounter,
): RequestHandler {
  return (req: Request, res: Response, next: NextFunction) => {
    const started = performance.now();
    const path = req.path;
    let firstTokenMs: number | undefined;
    if (COMPLETIONS.test(path)) {
      watchFirstToken(res, () => (firstTokenMs ??= performance.now() - started));
    }
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
      const model = COMPLETIONS.test(path) ? modelLabel(req, router) : '';
      const token = tokenId(req);
      if (COMPLETIONS.test(path) && status >= 400 && !aborted && !isAdmitted(res)) {
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
  if (COMPLETIONS.test(path)) {
    return path.replace(/\/$/, ''); // answered by the body parser (400/413/415)
  }
  if (DASHBOARD.test(path)) {
    return '/admin/queues';
  }
  return 'unmatched';
}

/** The canonical model name when the body names a known model (or alias); else ''. */
function modelLabel(req: Request, router: RouterConfig): string {
  const body: unknown = req.body;
  const name = typeof body === 'object' && body !== null ? (body as { model?: unknown }).model : undefined;
  return typeof name === 'string' ? (router.resolve(name)?.name ?? '') : '';
}

function tokenId(req: Request): string | undefined {
  const user: unknown = req.user;
  const id = typeof user === 'object' && user !== null ? (user as Partial<TokenRecord>).id : undefined;
  return typeof id === 'string' ? id : undefined;
}

/**
 * Time to first token of a stream: the first SSE data frame written to the client (the
 * status and headers may be committed earlier, with keep-alive comments, on a slow start).
 */
function watchFirstToken(res: Response, onFirst: () => void): void {
  const write = res.write.bind(res) as (...args: unknown[]) => boolean;
  let seen = false;
  res.write = ((...args: unknown[]) => {
    if (!seen) {
      const chunk = args[0];
      const text = typeof chunk === 'string' ? chunk : Buffer.isBuffer(chunk) ? chunk.toString('utf8', 0, 16) : '';
      if (text.startsWith('data: {') && !text.startsWith('data: {"error"')) {
        seen = true;
        onFirst();
      }
    }
    return write(...args);
  }) as Response['write'];
}
