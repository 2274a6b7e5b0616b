import { type ExecutionContext, Injectable } from '@nestjs/common';
import { Reflector } from '@nestjs/core';
import { AuthGuard } from '@nestjs/passport';
import type { Request } from 'express';
import { IS_PUBLIC } from './public.decorator';
import { unauthenticated } from './unauthenticated';

/** Applied globally; routes marked @Public() skip it. */
@Injectable()
export class BearerAuthGuard extends AuthGuard('bearer') {
  constructor(private readonly reflector: Reflector) {
    super();
  }

  override canActivate(context: ExecutionContext) {
    const isPublic = this.reflector.getAllAndOverride<boolean>(IS_PUBLIC, [context.getHandler(), context.getClass()]);
    // Already authenticated by authenticateFirst (API POSTs, before their body was read).
    const authenticated = context.switchToHttp().getRequest<Request>().user !== undefined;
    return isPublic === true || authenticated ? true : super.canActivate(context);
  }

  override handleRequest<T>(err: unknown, user: T, _info: unknown, context: ExecutionContext): T {
    if (err instanceof Error) {
      throw err;
    }
    if (user === false || user === undefined || user === null) {
      throw unauthenticated(context.switchToHttp().getRequest<Request>().headers.authorization);
    }
    return user;
  }
}
