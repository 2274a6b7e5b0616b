import { ApiError } from '@app/common';
import { Injectable } from '@nestjs/common';
import type { NextFunction, Request, RequestHandler, Response } from 'express';
import { sendApiError } from '../http/error-response';

/** Routes that keep answering during the drain: the probes must see it, the scraper may still read. */
const DURING_DRAIN = new Set(['/health', '/ready', '/metrics']);

/**
 * The gateway's shutdown drain. On SIGTERM the port stays open (a closed port is a
 * connection refused to load balancers, not a clean 503): new API requests are refused
 * with 503 `gateway_shutdown` and Retry-After, `/ready` answers 503, and every response
 * written from now on carries `Connection: close`, also those of requests already in
 * flight whose headers are not sent yet, so keep-alive clients move to another instance.
 * The relay ends the drain when its open responses have finished or the grace is over.
 */
@Injectable()
export class GatewayDrain {
  private active = false;
  /** Responses in flight whose headers may still be unsent (one Set entry per open request). */
  private readonly open = new Set<Response>();

  get draining(): boolean {
    return this.active;
  }

  begin(): void {
    if (this.active) {
      return;
    }
    this.active = true;
    for (const res of this.open) {
      if (!res.headersSent) {
        res.setHeader('connection', 'close');
      }
    }
    this.open.clear();
  }

  middleware(): RequestHandler {
    return (req: Request, res: Response, next: NextFunction) => {
      if (!this.active) {
        this.open.add(res);
        res.once('close', () => this.open.delete(res));
        next();
        return;
      }
      res.setHeader('connection', 'close');
      if (DURING_DRAIN.has(req.path)) {
        next();
        return;
      }
      sendApiError(res, ApiError.server(503, 'The gateway is shutting down. Please retry.', 'gateway_shutdown', 1_000));
    };
  }
}
