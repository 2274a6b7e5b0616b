import { ApiError, AppConfig } from '@app/common';
import { type ArgumentsHost, Catch, type ExceptionFilter, HttpException, Logger } from '@nestjs/common';
import type { Request, Response } from 'express';
import { errorTypeForStatus, sendApiError } from './error-response';
import { RouteTable } from './route-table';

/**
 * Every error leaves as an OpenAI error object: ours (ApiError), Nest's (guards,
 * unknown routes) and unexpected ones, which become a 500 that reveals nothing.
 * A known route answers OPTIONS with 204 and `Allow` (no route handles OPTIONS itself, so it
 * arrives here as Nest's 404): the methods the 405 of a wrong method lists, OPTIONS included.
 */
@Catch()
export class OpenAIExceptionFilter implements ExceptionFilter {
  private readonly logger = new Logger('Errors');

  constructor(
    private readonly routes: RouteTable,
    private readonly config: AppConfig,
  ) {}

  catch(exception: unknown, host: ArgumentsHost): void {
    const res = host.switchToHttp().getResponse<Response>();
    const req = host.switchToHttp().getRequest<Request>();
    if (res.headersSent) {
      // A stream already committed its status; the stream writer reports in-band.
      res.end();
      return;
    }
    if (req.method === 'OPTIONS' && exception instanceof HttpException && this.isRouteNotFound(exception)) {
      const allowed = this.knownMethods(req);
      if (allowed.length > 0) {
        res.setHeader('allow', allowed.join(', '));
        res.status(204).end();
        return;
      }
    }
    sendApiError(res, this.toApiError(exception, req, res));
  }

  /** The methods `req.path` answers; none for an unknown route or a hidden admin API. */
  private knownMethods(req: Request): string[] {
    // Without an admin key the admin API does not exist, for any method.
    const hidden = this.config.env.AQUEDUCT_ADMIN_KEY === undefined && /^\/admin(\/|$)/.test(req.path);
    return hidden ? [] : this.routes.allowedMethods(req.path);
  }

  private toApiError(exception: unknown, req: Request, res: Response): ApiError {
    if (exception instanceof ApiError) {
      return exception;
    }
    if (exception instanceof HttpException) {
      const status = exception.getStatus();
      if (status === 404 && this.isRouteNotFound(exception)) {
        const allowed = this.knownMethods(req);
        if (allowed.length > 0) {
          res.setHeader('allow', allowed.join(', '));
          return new ApiError(
            405,
            `Method ${req.method} is not allowed for ${req.path}. Allowed: ${allowed.join(', ')}.`,
            'invalid_request_error',
            null,
            'method_not_allowed',
          );
        }
        return ApiError.unknownUrl(req.method, req.path);
      }
      return new ApiError(status, this.messageOf(exception), errorTypeForStatus(status));
    }
    this.logger.error({ rid: req.rid, err: exception instanceof Error ? exception.stack : String(exception) });
    return ApiError.server(500, 'The server had an error while processing your request.');
  }

  private isRouteNotFound(e: HttpException): boolean {
    const r = e.getResponse();
    const message = typeof r === 'object' && r !== null ? (r as { message?: unknown }).message : r;
    return typeof message === 'string' && message.startsWith('Cannot ');
  }

  private messageOf(e: HttpException): string {
    const r = e.getResponse();
    if (typeof r === 'string') {
      return r;
    }
    const message = (r as { message?: unknown }).message;
    return Array.isArray(message) ? message.join('; ') : typeof message === 'string' ? message : e.message;
  }
}
