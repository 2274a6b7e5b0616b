import type { Socket } from 'node:net';
import type Redis from 'ioredis';

const PATCHED = Symbol('aqueduct.coalescedWrites');

type Writable = Socket & { [PATCHED]?: true };

/**
 * One socket write per event-loop turn for a Redis connection, whatever issued the commands.
 *
 * ioredis writes every command to its socket at once: one `write` syscall per command.
 * Profiled at c=16 (ns_c16 of vs-peers), socket writes were 20% of the gateway's busy time
 * and 28% of the worker's, most of them one small command each: BullMQ's scripts for many
 * jobs, claims, publishes and usage records issued by different requests in the same turn.
 * Auto-pipelining only merges commands issued in the same tick on one client, and BullMQ's
 * connection cannot use it (see the queue roles in redis-factory.ts). Corking the socket at the first
 * write of a turn and uncorking it in that turn's check phase (setImmediate) merges all of
 * them into one `writev`. The delay is bounded by one loop iteration: a pending immediate
 * makes the poll phase return at once, so an idle process sends at once too.
 */
export function coalesceWrites(client: Redis): Redis {
  const patch = (): void => {
    const socket = client.stream as Writable | undefined;
    if (socket === undefined || socket[PATCHED] === true) {
      return;
    }
    socket[PATCHED] = true;
    const write = socket.write.bind(socket) as (...args: unknown[]) => boolean;
    let corked = false;
    const uncork = (): void => {
      corked = false;
      socket.uncork();
    };
    socket.write = (...args: unknown[]): boolean => {
      if (!corked) {
        corked = true;
        socket.cork();
        setImmediate(uncork);
      }
      return write(...args);
    };
  };
  // Every (re)connect has a new socket; ioredis sets it before the handshake's first write.
  client.on('connect', patch);
  patch();
  return client;
}
