import { type ChildProcess, spawn } from 'node:child_process';
import { createConnection } from 'node:net';
import { freePort } from './stack';

/**
 * A throw-away `redis-server` on its own free port, for tests that stop or restart Redis
 * itself (the shared Redis at REDIS_URL is never touched). No persistence: a restart
 * comes back empty, as a fresh failover replica would.
 */
export class PrivateRedis {
  private child?: ChildProcess;
  private exited?: Promise<void>;
  private log = '';

  private constructor(
    readonly port: number,
    /** With a password, the server runs with `requirepass` and `url` carries it. */
    private readonly password?: string,
  ) {}

  static async start(opts: { password?: string } = {}): Promise<PrivateRedis> {
    const redis = new PrivateRedis(await freePort(), opts.password);
    await redis.launch();
    return redis;
  }

  /**
   * A server on a reserved free port that is not running yet: processes pointed at it boot
   * while Redis is unreachable; `restart()` starts it.
   */
  static async reserve(): Promise<PrivateRedis> {
    return new PrivateRedis(await freePort());
  }

  get url(): string {
    const auth = this.password === undefined ? '' : `:${this.password}@`;
    return `redis://${auth}127.0.0.1:${this.port}`;
  }

  get running(): boolean {
    return this.child !== undefined && this.child.exitCode === null && this.child.signalCode === null;
  }

  /** What the server printed (for failure messages). */
  output(): string {
    return this.log;
  }

  /** Stops the server (SIGKILL by default: an outage, not a clean shutdown) and waits for the exit. */
  async stop(signal: NodeJS.Signals = 'SIGKILL'): Promise<void> {
    const child = this.child;
    if (child === undefined || !this.running) {
      return;
    }
    child.kill(signal);
    await this.exited;
  }

  /** Starts the server again on the same port (empty), and waits until it answers PING. */
  async restart(): Promise<void> {
    await this.stop();
    await this.launch();
  }

  /** True when the server answers PING within `timeoutMs`. */
  ping(timeoutMs = 500): Promise<boolean> {
    return new Promise((resolve) => {
      const socket = createConnection({ host: '127.0.0.1', port: this.port });
      const finish = (ok: boolean) => {
        clearTimeout(timer);
        socket.destroy();
        resolve(ok);
      };
      const timer = setTimeout(() => finish(false), timeoutMs);
      let reply = '';
      socket.once('error', () => finish(false));
      const auth = this.password === undefined ? '' : `AUTH ${this.password}\r\n`;
      socket.once('connect', () => socket.write(`${auth}PING\r\n`));
      socket.on('data', (d: Buffer) => {
        reply += d.toString();
        if (reply.includes('PONG') || reply.startsWith('-')) {
          finish(reply.startsWith(auth === '' ? '+PONG' : '+OK'));
        }
      });
    });
  }

  private async launch(): Promise<void> {
    // The config arrives on stdin ("-"), so a password never shows on a command line.
    const child = spawn(
      'redis-server',
      ['-', '--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--logfile', ''],
      { stdio: ['pipe', 'pipe', 'pipe'] },
    );
    child.stdin?.end(this.password === undefined ? '' : `requirepass ${this.password}\n`);
    this.child = child;
    child.stdout?.on('data', (d: Buffer) => (this.log = (this.log + d.toString()).slice(-20_000)));
    child.stderr?.on('data', (d: Buffer) => (this.log = (this.log + d.toString()).slice(-20_000)));
    this.exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    // Never outlive the test process, even when it dies without cleaning up.
    const killOnExit = () => child.kill('SIGKILL');
    process.once('exit', killOnExit);
    void this.exited.then(() => process.off('exit', killOnExit));

    const until = Date.now() + 10_000;
    while (Date.now() < until) {
      if (!this.running) {
        throw new Error(`redis-server exited at start:\n${this.log}`);
      }
      if (await this.ping()) {
        return;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    child.kill('SIGKILL');
    throw new Error(`redis-server on port ${this.port} did not answer PING within 10 s:\n${this.log}`);
  }
}
