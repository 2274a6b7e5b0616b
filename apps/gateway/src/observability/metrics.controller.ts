import { AdminCredentials, ApiError, AppConfig } from '@app/common';
import { Controller, Get, Req, Res } from '@nestjs/common';
import type { Request, Response } from 'express';
import { Public } from '../auth/public.decorator';
import { BASIC_CHALLENGE, requireAdmin } from './admin-challenge';
import { GatewayMetrics } from './gateway-metrics';

/**
 * `GET /metrics`, Prometheus text format. Open by default, like most exporters (it holds
 * counts and model names, no secrets); AQUEDUCT_METRICS_REQUIRE_ADMIN=true puts it behind
 * the admin key.
 */
@Controller()
@Public()
export class MetricsController {
  private readonly credentials?: AdminCredentials;

  constructor(
    config: AppConfig,
    private readonly metrics: GatewayMetrics,
  ) {
    if (config.env.AQUEDUCT_METRICS_REQUIRE_ADMIN) {
      this.credentials = new AdminCredentials(config.env.AQUEDUCT_ADMIN_KEY);
    }
  }

  @Get('metrics')
  async scrape(@Req() req: Request, @Res() res: Response): Promise<void> {
    if (this.credentials !== undefined) {
      try {
        requireAdmin(this.credentials, req.headers.authorization, '/metrics');
      } catch (err) {
        if (err instanceof ApiError && err.status === 401) {
          res.setHeader('www-authenticate', BASIC_CHALLENGE);
        }
        throw err;
      }
    }
    const body = await this.metrics.registry.metrics();
    res.setHeader('content-type', this.metrics.registry.contentType);
    res.setHeader('cache-control', 'no-store');
    res.status(200).send(body);
  }
}
