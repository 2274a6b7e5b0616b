import { readdirSync, readFileSync, readlinkSync } from 'node:fs';
import type { ProcessHandle, Stack } from './stack';
import { waitUntil } from './wait';

/**
 * Looking at the stack's processes from outside, as the fault suites must: which are alive,
 * which one holds a TCP connection (Linux /proc), and how many workers the gateway counts.
 */

/** True while a child process has neither exited nor been killed. */
export function alive(p: ProcessHandle): boolean {
  return p.child.exitCode === null && p.child.signalCode === null;
}

/** The rows of the kernel's TCP socket tables (IPv4 and IPv6), split into fields. */
function tcpSockets(): string[][] {
  return ['/proc/net/tcp', '/proc/net/tcp6']
    .flatMap((f) => readFileSync(f, 'utf8').split('\n').slice(1))
    .map((line) => line.trim().split(/\s+/));
}

/** A port as /proc/net/tcp writes it after an address: `:` and four upper-case hex digits. */
function procPort(port: number): string {
  return `:${port.toString(16).toUpperCase().padStart(4, '0')}`;
}

/** The process holding the TCP connection from `localPort` to `remotePort`: which worker ran an upstream request. */
export function socketOwner(
  localPort: number,
  remotePort: number,
  candidates: ProcessHandle[],
): ProcessHandle | undefined {
  const inode = tcpSockets().find(
    (f) => f[1]?.endsWith(procPort(localPort)) && f[2]?.endsWith(procPort(remotePort)),
  )?.[9];
  if (inode === undefined) {
    return undefined;
  }
  return candidates.find((w) => {
    const dir = `/proc/${w.child.pid}/fd`;
    try {
      return readdirSync(dir).some((fd) => {
        try {
          return readlinkSync(`${dir}/${fd}`) === `socket:[${inode}]`;
        } catch {
          return false;
        }
      });
    } catch {
      return false;
    }
  });
}

/** Established TCP connections to `port`, counted on the server side: leaked upstream sockets show here. */
export function connectionsTo(port: number): number {
  return tcpSockets().filter((f) => f[1]?.endsWith(procPort(port)) && f[3] === '01').length;
}

/** How many live workers the gateway counts, from /ready (0 while it is not ready). */
export async function readyWorkers(stack: Stack): Promise<number> {
  const res = await fetch(`${stack.baseUrl}/ready`);
  return res.status === 200 ? ((await res.json()) as { workers: number }).workers : 0;
}

/** Waits until the gateway counts exactly `n` (≥ 1) live workers: heartbeats arrive and lapse asynchronously. */
export async function waitForWorkers(stack: Stack, n: number, timeoutMs = 10_000): Promise<void> {
  await waitUntil(`the gateway to count ${n} live workers`, async () => (await readyWorkers(stack)) === n, timeoutMs);
}
