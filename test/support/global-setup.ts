import { execSync } from 'node:child_process';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

const ROOT = join(__dirname, '..', '..');
const OUTPUTS = [
  'dist/apps/gateway/apps/gateway/src/main.js',
  'dist/apps/worker/apps/worker/src/main.js',
  'dist/apps/cli/apps/cli/src/main.js',
];

function newestSource(dir: string): number {
  let newest = 0;
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) {
      newest = Math.max(newest, newestSource(path));
    } else if (entry.name.endsWith('.ts') && !entry.name.endsWith('.spec.ts')) {
      newest = Math.max(newest, statSync(path).mtimeMs);
    }
  }
  return newest;
}

/**
 * End-to-end tests run the built gateway, worker and CLI as real child processes, so the
 * build must match the sources; it is rebuilt only when a source is newer than it.
 */
export default function setup(): void {
  const outputs = OUTPUTS.map((o) => join(ROOT, o));
  const built = outputs.every(existsSync) ? Math.min(...outputs.map((o) => statSync(o).mtimeMs)) : 0;
  const sources = Math.max(newestSource(join(ROOT, 'apps')), newestSource(join(ROOT, 'libs')));
  if (sources > built) {
    execSync('npm run build --silent', { cwd: ROOT, stdio: 'inherit' });
  }
}
