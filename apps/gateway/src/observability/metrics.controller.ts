import { AdminCredentials, adminRefusal, AppConfig } from '@app/common';
import { Controller, Get, Req, Res } from '@nestjs/common';
import type { Request, Response } from 'express';
import { Public } from '../auth/public.decorator';
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
    const refusal =
      this.credentials && adminRefusal(this.credentials, req.headers.authorization, { what: '/metrics', basic: true });
    if (refusal) {
      if (refusal.challenge !== undefined) {
        res.setHeader('www-authenticate', refusal.challenge);
      }
      throw refusal.error;
    }
    const body = await this.metrics.registry.metrics();
    res.setHeader('content-type', this.metrics.registry.contentType);
    res.setHeader('cache-control', 'no-store');
    res.status(200).send(body);
  }
}
