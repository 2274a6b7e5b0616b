import type { TokenRecord } from '@app/common';
import { Injectable } from '@nestjs/common';
import type { Request } from 'express';
import { PassportStrategy } from '@nestjs/passport';
import { Strategy } from 'passport-http-bearer';
import { TokenAuthService } from './token-auth.service';
import { unauthenticated } from './unauthenticated';

/**
 * passport-http-bearer: `Authorization: Bearer <key>` → the token record, or a 401.
 * Only the header is a credential: the strategy would also take `access_token` from the
 * query string (keys in URLs end up in proxy logs) or the body, so it is shown the header
 * alone. A non-string in the query or body can then never reach the key lookup either.
 */
@Injectable()
export class BearerStrategy extends PassportStrategy(Strategy, 'bearer') {
  constructor(private readonly tokens: TokenAuthService) {
    super();
  }

  override authenticate(req: Request, options?: object): void {
    super.authenticate({ headers: { authorization: req.headers.authorization } } as Request, options);
  }

  validate(key: unknown): Promise<TokenRecord> {
    // Unreachable with a header (always a string), but a non-string must be a 401, never a 500.
    return typeof key === 'string' ? this.tokens.authenticate(key) : Promise.reject(unauthenticated('not a string'));
  }
}
