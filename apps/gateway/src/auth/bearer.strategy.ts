import type { TokenRecord } from '@app/common';
import { Injectable } from '@nestjs/common';
import { PassportStrategy } from '@nestjs/passport';
import { Strategy } from 'passport-http-bearer';
import { TokenAuthService } from './token-auth.service';

/** passport-http-bearer: `Authorization: Bearer <key>` → the token record, or a 401. */
@Injectable()
export class BearerStrategy extends PassportStrategy(Strategy, 'bearer') {
  constructor(private readonly tokens: TokenAuthService) {
    super();
  }

  validate(key: string): Promise<TokenRecord> {
    return this.tokens.authenticate(key);
  }
}
