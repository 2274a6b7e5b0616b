import { AdminCredentials, adminRefusal, ApiError, AppConfig, ModelQueues } from '@app/common';
import type { AppViewRoute, QueueAdapterOptions } from '@bull-board/api/typings/app';
import { BullMQAdapter } from '@bull-board/api/bullMQAdapter';
import { ExpressAdapter } from '@bull-board/express';
import { type BullBoardInstance, BullBoardModule, InjectBullBoard } from '@bull-board/nestjs';
import { Injectable, Module, type OnModuleInit } from '@nestjs/common';
import type { Queue } from 'bullmq';
import type { NextFunction, Request, RequestHandler, Response } from 'express';
import { sendApiError } from '../http/error-response';
import { redactJobData } from './job-redaction';

export const DASHBOARD_ROUTE = '/admin/queues';
const DASHBOARD_CSP =
  "default-src 'self' 'unsafe-inline' 'unsafe-eval' data: blob:; frame-ancestors 'none'; base-uri 'self'";

/**
 * The dashboard page without the tags that load something from another host: Bull Board's
 * index.ejs links its fonts from a public CDN, so every operator's browser that opens the
 * board would call out (and an offline or locked-down network would wait on it). Its CSS
 * falls back to the system's fonts (`system-ui`, `ui-monospace`); every other asset is served
 * from the board's own static/ folder. Matches `<link …>` and `<script …></script>` whose
 * href or src is absolute (`http://`, `https://` or protocol-relative `//`).
 */
export function withoutExternalAssets(html: string): string {
  return html.replace(
    /<(link|script)\b[^>]*\b(?:href|src)\s*=\s*["']?(?:https?:)?\/\/[^>]*>(?:\s*<\/script>)?[ \t]*\n?/gi,
    '',
  );
}

/** Bull Board's Express sub-app, without `X-Powered-By` (as the gateway) and without external assets. */
class DashboardServerAdapter extends ExpressAdapter {
  constructor() {
    super();
    (this.getRouter() as { disable: (setting: string) => void }).disable('x-powered-by');
  }

  /** The page itself, rendered as Bull Board does, then stripped of external assets. */
  override setEntryRoute(routeDef: AppViewRoute): ExpressAdapter {
    if (routeDef.method !== 'get') {
      return super.setEntryRoute(routeDef);
    }
    const page: RequestHandler = (_req, res, next) => {
      const { name, params } = routeDef.handler({ basePath: this.basePath, uiConfig: this.uiConfig });
      res.render(name, params, (err: Error | null, html?: string) => {
        if (err !== null || html === undefined) {
          next(err);
          return;
        }
        res.type('html').send(withoutExternalAssets(html));
      });
    };
    this.app.get(routeDef.route, page);
    return this;
  }
}

/** The BullMQ adapter with job data shown redacted (see redactJobData). */
class RedactingBullMQAdapter extends BullMQAdapter {
  constructor(queue: Queue, options?: Partial<QueueAdapterOptions>) {
    super(queue, options);
    this.setFormatter('data', redactJobData);
  }
}

/**
 * In front of every dashboard path: 404 when no admin key is configured (like the rest of
 * /admin); otherwise the admin key as the password of HTTP Basic (any user name: the
 * browser's own login prompt) or as a Bearer token. A missing or wrong key gets 401 with
 * a Basic challenge, so the browser asks; an Aqueduct API token gets 403.
 */
export function dashboardGuard(config: AppConfig): RequestHandler {
  const credentials = new AdminCredentials(config.env.AQUEDUCT_ADMIN_KEY);
  return (req: Request, res: Response, next: NextFunction) => {
    if (!credentials.configured) {
      const path = req.originalUrl.split('?')[0] ?? '';
      sendApiError(res, ApiError.unknownUrl(req.method, path));
      return;
    }
    const refusal = adminRefusal(credentials, req.headers.authorization, { what: 'the queue dashboard', basic: true });
    if (refusal !== undefined) {
      if (refusal.challenge !== undefined) {
        res.setHeader('www-authenticate', refusal.challenge);
      }
      sendApiError(res, refusal.error);
      return;
    }
    res.setHeader('x-frame-options', 'DENY');
    // The browser itself refuses anything from another host (a font, a script, a request), also
    // should a later Bull Board add one; inline code and eval stay allowed, as the UI's bundle
    // may use them, so this restricts where from, not how.
    res.setHeader('content-security-policy', DASHBOARD_CSP);
    res.setHeader('cache-control', 'no-store');
    res.setHeader('referrer-policy', 'no-referrer');
    next();
  };
}

/**
 * Every model's queue on the board, read-only: jobs are single attempts bound to a client
 * connection, so retrying, adding or editing them from a UI would replay streams nobody
 * listens to (or write the redacted view back). A model's waiting line is its queue's
 * "prioritized" jobs, in dispatch order (see scheduling/turns.ts).
 */
@Injectable()
export class DashboardQueues implements OnModuleInit {
  constructor(
    @InjectBullBoard() private readonly board: BullBoardInstance,
    private readonly queues: ModelQueues,
  ) {}

  onModuleInit(): void {
    for (const [model, queue] of this.queues.entries()) {
      this.board.addQueue(
        new RedactingBullMQAdapter(queue, {
          readOnlyMode: true,
          allowRetries: false,
          displayName: model,
          description: `Requests for ${model}: one job per attempt, waiting (prioritized) until a deployment has capacity, removed as soon as it ends.`,
        }),
      );
    }
  }
}

/** Bull Board at /admin/queues, behind the admin key. */
@Module({
  imports: [
    BullBoardModule.forRootAsync({
      inject: [AppConfig],
      useFactory: (config: AppConfig) => ({
        route: DASHBOARD_ROUTE,
        adapter: DashboardServerAdapter,
        boardOptions: { uiConfig: { boardTitle: 'Aqueduct', hideDocsLink: true } },
        middleware: dashboardGuard(config),
      }),
    }),
  ],
  providers: [DashboardQueues],
})
export class DashboardModule {}
