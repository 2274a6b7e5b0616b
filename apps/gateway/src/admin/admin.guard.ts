import { AdminCredentials, ApiError, AppConfig } from '@app/common';
import { type CanActivate, type ExecutionContext, Injectable } from '@nestjs/common';
import type { Request } from 'express';

/**
 * `/admin/*`: the bearer must be AQUEDUCT_ADMIN_KEY (compared in constant time, see
 * AdminCredentials). Without an admin key the admin API does not exist (404); an
 * ordinary API token is recognised and refused with 403.
 */
@Injectable()
export class AdminGuard implements CanActivate {
  private readonly credentials: AdminCredentials;

  constructor(config: AppConfig) {
    this.credentials = new AdminCredentials(config.env.AQUEDUCT_ADMIN_KEY);
  }

  canActivate(context: ExecutionContext): boolean {
    const req = context.switchToHttp().getRequest<Request>();
    if (!this.credentials.configured) {
      throw ApiError.unknownUrl(req.method, req.path);
    }
    switch (this.credentials.check(req.headers.authorization)) {
      case 'admin':
        return true;
      case 'api_token':
        throw new ApiError(403, 'This API key may not use the admin API.', 'permission_error', null, 'admin_required');
      case 'wrong':
      case 'missing':
        throw new ApiError(
          401,
          'The admin API needs the admin key as a Bearer token.',
          'invalid_request_error',
          null,
          'invalid_api_key',
        );
    }
  }
}
