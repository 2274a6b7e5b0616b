import { randomUUID } from 'node:crypto';
import type { NextFunction, Request, Response } from 'express';

declare module 'express-serve-static-core' {
  interface Request {
    /** Set first thing for every request; also the completion id and BullMQ job id. */
    rid: string;
  }
}

/** Every response carries `x-request-id`, errors and unknown routes included. */
export function requestId(req: Request, res: Response, next: NextFunction): void {
  // randomUUID draws from a cached entropy pool: far cheaper per request than randomBytes.
  req.rid = randomUUID().replaceAll('-', '');
  res.setHeader('x-request-id', req.rid);
  next();
}
