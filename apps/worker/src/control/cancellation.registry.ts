import { AppConfig, type CancelCommand, CancelledError, CONTROL_SERVER } from '@app/common';
import { Inject, Injectable, type OnModuleInit } from '@nestjs/common';
import type { ServerRedis } from '@nestjs/microservices';

const MEMO_MS = 60_000;

/**
 * Cross-process cancellation. BullMQ's own cancelJob only reaches jobs of the calling
 * process, so the gateway broadcasts cancels on the control transport and each worker
 * aborts the jobs it holds. A cancel that arrives before its job is picked up is
 * remembered for a minute so the job is dropped at pickup.
 */
@Injectable()
export class CancellationRegistry implements OnModuleInit {
  private readonly running = new Map<string, AbortController>();
  private readonly recentlyCancelled = new Map<string, number>();

  constructor(
    private readonly config: AppConfig,
    @Inject(CONTROL_SERVER) private readonly server: ServerRedis,
  ) {}

  onModuleInit(): void {
    this.server.addHandler(
      this.config.names.control.cancel,
      (cmd: CancelCommand) => {
        this.cancel(cmd.rid, cmd.reason);
        return Promise.resolve();
      },
      true,
    );
  }

  /** Registers a job; the returned controller aborts on cancel. Undefined if already cancelled. */
  register(rid: string): AbortController | undefined {
    if (this.recentlyCancelled.has(rid)) {
      return undefined;
    }
    const controller = new AbortController();
    this.running.set(rid, controller);
    return controller;
  }

  release(rid: string): void {
    this.running.delete(rid);
  }

  cancel(rid: string, reason: CancelCommand['reason']): void {
    const now = Date.now();
    this.recentlyCancelled.set(rid, now);
    for (const [id, at] of this.recentlyCancelled) {
      if (now - at < MEMO_MS) {
        break; // insertion order = age order
      }
      this.recentlyCancelled.delete(id);
    }
    this.running.get(rid)?.abort(new CancelledError(reason));
  }

  /** Aborts everything still running (shutdown past its grace period). */
  cancelAll(reason: CancelCommand['reason']): void {
    for (const rid of this.running.keys()) {
      this.cancel(rid, reason);
    }
  }

  get activeCount(): number {
    return this.running.size;
  }
}

