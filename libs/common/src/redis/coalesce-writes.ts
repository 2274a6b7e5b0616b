import type { Socket } from 'node:net';
import type Redis from 'ioredis';

const PATCHED = Symbol('aqueduct.coalescedWrites');

type Writable = Socket & { [PATCHED]?: true };

/**
 * One socket write per callback for a Redis connection, whatever issued the commands.
 *
 * ioredis writes every command to its socket at once: one `write` syscall per command.
 * Profiled at c=16 (ns_c16 of vs-peers), socket writes were 20% of the gateway's busy time
 * and 28% of the worker's, most of them one small command each: BullMQ's script calls,
 * claims, publishes and usage records that one callback issues together. Auto-pipelining
 * only merges commands of one client, and BullMQ's connection cannot use it (see the queue
 * roles in redis-factory.ts). Corking the socket at the first write and uncorking it once the
 * current callback is done (process.nextTick) merges them into one `writev`.
 *
 * Not later than that: uncorked in the check phase (setImmediate), a lock renewal or a
 * heartbeat issued by a timer waited behind whatever synchronous work the poll phase did next
 * (a 40 MB upstream body parsed in one go held it for hundreds of ms, and the gateway took a
 * live worker for lost). Batching across callbacks is done where it is safe, by the relay
 * outbox and the usage batch.
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
        process.nextTick(uncork);
      }
      return write(...args);
    };
  };
  // Every (re)connect has a new socket; ioredis sets it before the handshake's first write.
  client.on('connect', patch);
  patch();
  return client;
}
