import { execSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';

/**
 * End-to-end tests run the built gateway and worker as real child processes, so the
 * build must be current. Unit tests import the TypeScript sources directly.
 */
export default function setup(): void {
  const root = join(__dirname, '..', '..');
  if (process.env.AQUEDUCT_TEST_SKIP_BUILD === '1' && existsSync(join(root, 'dist'))) {
    return;
  }
  execSync('npm run build --silent', { cwd: root, stdio: 'inherit' });
}
