/** Pieces every benchmark script shares: integer settings from the environment, cleanup that always runs. */

/** An integer setting, clamped to [min, max]; a value that is not an integer stops the run. */
export function intEnv(name: string, def: number, min: number, max: number): number {
  const raw = process.env[name];
  const n = raw === undefined || raw === '' ? def : Number(raw);
  if (!Number.isInteger(n)) {
    throw new Error(`${name} must be an integer, got ${raw}`);
  }
  return Math.min(max, Math.max(min, n));
}

/** A figure for a table: fixed decimals, or `n/a` when it could not be measured (NaN, Infinity). */
export const f1 = (n: number): string => (Number.isFinite(n) ? n.toFixed(1) : 'n/a');
export const f2 = (n: number): string => (Number.isFinite(n) ? n.toFixed(2) : 'n/a');

/** Cleanup steps run once, last registered first, whether the run succeeded, failed or timed out. */
export class Cleanup {
  private readonly steps: { name: string; fn: () => Promise<unknown> | void }[] = [];
  private running: Promise<void> | undefined;

  add(name: string, fn: () => Promise<unknown> | void): void {
    this.steps.push({ name, fn });
  }

  run(): Promise<void> {
    this.running ??= (async () => {
      for (const step of this.steps.reverse()) {
        try {
          await step.fn();
        } catch (err) {
          console.error(`cleanup: ${step.name} failed: ${(err as Error).message}`);
        }
      }
    })();
    return this.running;
  }
}

/**
 * Runs a benchmark's `main` with its cleanup guaranteed: on success, failure, SIGINT/SIGTERM
 * or the watchdog (exit codes 0, 1, 2), so no child process or Redis key outlives the run.
 */
export function runBench(name: string, watchdogMs: number, main: (cleanup: Cleanup) => Promise<void>): void {
  const cleanup = new Cleanup();
  const abort = (why: string) => {
    console.error(`${name}: ${why}, cleaning up`);
    void cleanup.run().finally(() => process.exit(2));
  };
  const watchdog = setTimeout(() => abort(`still running after ${watchdogMs} ms`), watchdogMs);
  process.once('SIGINT', () => abort('SIGINT'));
  process.once('SIGTERM', () => abort('SIGTERM'));
  main(cleanup)
    .then(() => cleanup.run())
    .then(() => {
      clearTimeout(watchdog);
      process.exit(0);
    })
    .catch(async (err: unknown) => {
      console.error(`${name} failed:`, err);
      await cleanup.run();
      process.exit(1);
    });
}
