/**
 * Polls `cond` every `intervalMs` until it holds and returns how long that took; fails naming
 * `what` after `timeoutMs`. The e2e suites wait this way on processes, Redis and the upstream.
 */
export async function waitUntil(
  what: string,
  cond: () => boolean | Promise<boolean>,
  timeoutMs = 10_000,
  intervalMs = 10,
): Promise<number> {
  const started = Date.now();
  while (!(await cond())) {
    if (Date.now() - started > timeoutMs) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
  return Date.now() - started;
}
