import { AdminCredentials, adminRefusal, ApiError, AppConfig } from '@app/common';
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
    const refusal = adminRefusal(this.credentials, req.headers.authorization, { what: 'the admin API', basic: false });
    if (refusal !== undefined) {
      throw refusal.error;
    }
    return true;
  }
}
