import { ApiError } from '@app/common';
import { type ExecutionContext, Injectable } from '@nestjs/common';
import { Reflector } from '@nestjs/core';
import { AuthGuard } from '@nestjs/passport';
import type { Request } from 'express';
import { IS_PUBLIC } from './public.decorator';

/** Applied globally; routes marked @Public() skip it. */
@Injectable()
export class BearerAuthGuard extends AuthGuard('bearer') {
  constructor(private readonly reflector: Reflector) {
    super();
  }

  override canActivate(context: ExecutionContext) {
    const isPublic = this.reflector.getAllAndOverride<boolean>(IS_PUBLIC, [context.getHandler(), context.getClass()]);
    return isPublic === true ? true : super.canActivate(context);
  }

  override handleRequest<T>(err: unknown, user: T, _info: unknown, context: ExecutionContext): T {
    if (err instanceof Error) {
      throw err;
    }
    if (user === false || user === undefined || user === null) {
      const header = context.switchToHttp().getRequest<Request>().headers.authorization;
      throw header === undefined
        ? new ApiError(
            401,
            "You didn't provide an API key. You need to provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
            'invalid_request_error',
          )
        : new ApiError(
            401,
            'Malformed Authorization header: expected "Bearer <key>".',
            'invalid_request_error',
            null,
            'invalid_api_key',
          );
    }
    return user;
  }
}
