import { createServer, type IncomingMessage, type RequestListener, type Server } from 'node:http';
import type { Socket } from 'node:net';
import type { NestApplicationOptions } from '@nestjs/common';
import { ExpressAdapter } from '@nestjs/platform-express';

/**
 * Node's HTTP server limits, set on purpose rather than left at defaults that suit no
 * gateway: a client that opens a socket and never sends a request, trickles its headers or
 * trickles its body is cut off after a bounded time, so a thousand such sockets hold no
 * more than a thousand small sockets for seconds, while normal requests keep flowing.
 * Response time is not bounded here (a stream may run for minutes): the request deadline
 * and the slow-client cut-off do that.
 */
export const HTTP_LIMITS = {
  /** From the first byte of a request to the end of its headers. */
  headersTimeoutMs: 10_000,
  /** From the first byte to the end of the body (4 MiB at ~1 Mbit/s fits). */
  requestTimeoutMs: 60_000,
  /**
   * Idle time of a keep-alive connection between requests: longer than the 60 s idle
   * timeout of common load balancers, so that the balancer, not the gateway, closes idle
   * connections (otherwise it may reuse one the gateway is closing and answer 502).
   */
  keepAliveTimeoutMs: 65_000,
  /** How often Node checks the two timeouts above (its default, 30 s, lets them overrun). */
  checkIntervalMs: 1_000,
  maxHeadersCount: 100,
  /**
   * Connections the kernel may hold completed but not yet accepted (Node's default is 511;
   * the kernel caps it at net.core.somaxconn). A burst of connects past it while the event
   * loop is busy is not refused: the kernel drops the handshake's last ACK and the client
   * retransmits for seconds, so the burst arrives late instead of at once.
   */
  listenBacklog: 4_096,
} as const;

/** Nest's Express adapter, with the HTTP server created with the limits above. */
export class GatewayHttpAdapter extends ExpressAdapter {
  override initHttpServer(options: NestApplicationOptions): void {
    if (options.httpsOptions !== undefined) {
      super.initHttpServer(options);
      return;
    }
    const server = createServer(
      {
        headersTimeout: HTTP_LIMITS.headersTimeoutMs,
        requestTimeout: HTTP_LIMITS.requestTimeoutMs,
        keepAliveTimeout: HTTP_LIMITS.keepAliveTimeoutMs,
        connectionsCheckingInterval: HTTP_LIMITS.checkIntervalMs,
      },
      this.getInstance<RequestListener>(),
    );
    server.maxHeadersCount = HTTP_LIMITS.maxHeadersCount;
    closeSilentConnections(server, HTTP_LIMITS.headersTimeoutMs);
    this.setHttpServer(server);
  }

  override listen(port: string | number, hostOrCallback?: string | (() => void), callback?: () => void): Server {
    const host = typeof hostOrCallback === 'string' ? hostOrCallback : undefined;
    const done = typeof hostOrCallback === 'function' ? hostOrCallback : callback;
    return (this.getHttpServer() as Server).listen(
      { port: Number(port), host, backlog: HTTP_LIMITS.listenBacklog },
      done,
    );
  }
}

/**
 * Node's headersTimeout starts with a request's first byte: a socket that connects and
 * never sends anything is not covered by it (nor by keepAliveTimeout, which starts after
 * a first response). Such sockets get the same bound here: no complete request within
 * `ms` of connecting, and the socket is closed.
 */
function closeSilentConnections(server: Server, ms: number): void {
  const pending = new WeakMap<Socket, NodeJS.Timeout>();
  server.on('connection', (socket: Socket) => {
    const timer = setTimeout(() => socket.destroy(), ms);
    timer.unref();
    pending.set(socket, timer);
    socket.once('close', () => clearTimeout(timer));
  });
  server.on('request', (req: IncomingMessage) => {
    const timer = pending.get(req.socket);
    if (timer !== undefined) {
      clearTimeout(timer);
      pending.delete(req.socket);
    }
  });
}
