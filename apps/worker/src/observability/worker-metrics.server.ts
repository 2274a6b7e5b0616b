import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { AdminCredentials, adminRefusal, ApiError, AppConfig } from '@app/common';
import { Injectable, Logger, type OnApplicationBootstrap, type OnApplicationShutdown } from '@nestjs/common';
import { WorkerMetrics } from './worker-metrics';

/**
 * The worker's own small HTTP listener on WORKER_METRICS_PORT (0: none): `GET /metrics`
 * (Prometheus text) and `GET /health` (liveness, for probes). It is a side door: when the
 * port is taken, the worker logs a warning and keeps taking jobs without it.
 */
@Injectable()
export class WorkerMetricsServer implements OnApplicationBootstrap, OnApplicationShutdown {
  private readonly logger = new Logger('WorkerMetrics');
  private readonly credentials?: AdminCredentials;
  private server?: Server;

  constructor(
    private readonly config: AppConfig,
    private readonly metrics: WorkerMetrics,
  ) {
    if (config.env.AQUEDUCT_METRICS_REQUIRE_ADMIN) {
      this.credentials = new AdminCredentials(config.env.AQUEDUCT_ADMIN_KEY);
    }
  }

  async onApplicationBootstrap(): Promise<void> {
    const { WORKER_METRICS_PORT: port, WORKER_METRICS_HOST: host } = this.config.env;
    if (port === 0) {
      return;
    }
    const server = createServer((req, res) => void this.handle(req, res));
    // Scrapes are short; do not let an idle keep-alive connection hold shutdown up.
    server.keepAliveTimeout = 5_000;
    await new Promise<void>((resolve) => {
      server.once('error', (err: NodeJS.ErrnoException) => {
        this.logger.warn(
          `metrics port ${host}:${port} is not available (${err.code ?? err.message}); this worker serves no metrics`,
        );
        resolve();
      });
      server.listen(port, host, () => {
        this.server = server;
        this.logger.log(`metrics on http://${host}:${port}/metrics`);
        resolve();
      });
    });
  }

  async onApplicationShutdown(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    if (server !== undefined) {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    }
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? '/').split('?')[0] ?? '/';
    if (path !== '/health' && path !== '/metrics') {
      return send(res, ApiError.unknownUrl(req.method ?? '?', path));
    }
    if (req.method !== 'GET' && req.method !== 'HEAD') {
      const message = `Method ${req.method ?? '?'} is not allowed for ${path}. Allowed: GET, HEAD.`;
      res.setHeader('allow', 'GET, HEAD');
      return send(res, new ApiError(405, message, 'invalid_request_error', null, 'method_not_allowed'));
    }
    if (path === '/health') {
      return send(res, { status: 'ok' });
    }
    const refusal =
      this.credentials && adminRefusal(this.credentials, req.headers.authorization, { what: '/metrics', basic: true });
    if (refusal) {
      if (refusal.challenge !== undefined) {
        res.setHeader('www-authenticate', refusal.challenge);
      }
      return send(res, refusal.error);
    }
    try {
      const body = await this.metrics.registry.metrics();
      res.writeHead(200, { 'content-type': this.metrics.registry.contentType, 'cache-control': 'no-store' });
      res.end(req.method === 'HEAD' ? undefined : body);
    } catch (err) {
      this.logger.warn(`metrics not collected: ${(err as Error).message}`);
      send(res, ApiError.server(500, 'Metrics could not be collected.'));
    }
  }
}

/** JSON answers, errors in the OpenAI shape like everywhere else. */
function send(res: ServerResponse, body: ApiError | { status: 'ok' }): void {
  const [status, json] = body instanceof ApiError ? [body.status, body.body] : [200, body];
  res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' });
  res.end(JSON.stringify(json));
}
