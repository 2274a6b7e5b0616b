import { randomBytes } from 'node:crypto';
import type { NextFunction, Request, Response } from 'express';

declare module 'express-serve-static-core' {
  interface Request {
    /** Set first thing for every request; also the completion id and BullMQ job id. */
    rid: string;
  }
}

/** Every response carries `x-request-id`, errors and unknown routes included. */
export function requestId(req: Request, res: Response, next: NextFunction): void {
  req.rid = randomBytes(12).toString('hex');
  res.setHeader('x-request-id', req.rid);
  next();
}
