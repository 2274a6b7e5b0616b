import type { CancelCommand } from '../contracts/relay-message';

/** A job stopped on purpose: its client left, its deadline passed on the gateway, or the worker shuts down. */
export class CancelledError extends Error {
  override readonly name = 'CancelledError';

  constructor(readonly reason: CancelCommand['reason']) {
    super(`cancelled: ${reason}`);
  }
}
