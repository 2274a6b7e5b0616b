import { ApiError, type TokenRecord } from '@app/common';
import type { RequestHandler } from 'express';
import passport from 'passport';
import { sendApiError } from '../http/error-response';
import { unauthenticated } from './unauthenticated';

/**
 * Authenticates POSTs to the API routes before their body is read, so an unauthenticated
 * client cannot make the gateway buffer and parse megabytes of JSON. The same passport
 * strategy as the global guard (which then sees `req.user` and lets the request through).
 * Only the exact route: an unknown path below it stays a 404.
 */
export function authenticateFirst(): RequestHandler {
  const authenticate = (req: Parameters<RequestHandler>[0], res: Parameters<RequestHandler>[1], next: () => void) =>
    (
      passport.authenticate('bearer', { session: false }, (err: unknown, user: TokenRecord | false | undefined) => {
        if (err !== null && err !== undefined) {
          sendApiError(res, err instanceof ApiError ? err : ApiError.server(500, 'Authentication failed.'));
          return;
        }
        if (user === false || user === undefined) {
          sendApiError(res, unauthenticated(req.headers.authorization));
          return;
        }
        req.user = user;
        next();
      }) as RequestHandler
    )(req, res, next);

  return (req, res, next) => {
    if (req.method !== 'POST' || (req.path !== '/' && req.path !== '')) {
      next();
      return;
    }
    authenticate(req, res, next);
  };
}
