import type { TokenRecord } from '@app/common';
import { createParamDecorator, type ExecutionContext } from '@nestjs/common';
import type { Request } from 'express';

/** The authenticated token record that passport put on the request. */
export const CurrentToken = createParamDecorator(
  (_: unknown, ctx: ExecutionContext): TokenRecord => ctx.switchToHttp().getRequest<Request>().user as TokenRecord,
);
