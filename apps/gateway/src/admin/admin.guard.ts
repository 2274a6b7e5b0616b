import { createHash, timingSafeEqual } from 'node:crypto';
import { ApiError, AppConfig, TokenStore } from '@app/common';
import { type CanActivate, type ExecutionContext, Injectable } from '@nestjs/common';
import type { Request } from 'express';

const digest = (s: string) => createHash('sha256').update(s).digest();

/**
 * `/admin/*`: the bearer must be AQUEDUCT_ADMIN_KEY, compared in constant time (on
 * digests, so the length does not leak either). Without an admin key the admin API does
 * not exist (404); an ordinary API token is recognised and refused with 403.
 */
@Injectable()
export class AdminGuard implements CanActivate {
  private readonly adminDigest?: Buffer;

  constructor(
    config: AppConfig,
    private readonly tokens: TokenStore,
  ) {
    const key = config.env.AQUEDUCT_ADMIN_KEY;
    this.adminDigest = key === undefined ? undefined : digest(key);
  }

  async canActivate(context: ExecutionContext): Promise<boolean> {
    const req = context.switchToHttp().getRequest<Request>();
    if (this.adminDigest === undefined) {
      throw new ApiError(404, `Invalid URL (${req.method} ${req.path})`, 'invalid_request_error', null, 'unknown_url');
    }
    const match = /^Bearer (\S+)$/.exec(req.headers.authorization ?? '');
    const presented = match?.[1];
    if (presented !== undefined && timingSafeEqual(digest(presented), this.adminDigest)) {
      return true;
    }
    if (presented !== undefined && (await this.isApiToken(presented))) {
      throw new ApiError(403, 'This API key may not use the admin API.', 'permission_error', null, 'admin_required');
    }
    throw new ApiError(
      401,
      'The admin API needs the admin key as a Bearer token.',
      'invalid_request_error',
      null,
      'invalid_api_key',
    );
  }

  private async isApiToken(key: string): Promise<boolean> {
    try {
      return (await this.tokens.findByKey(key)) !== undefined;
    } catch {
      return false;
    }
  }
}
