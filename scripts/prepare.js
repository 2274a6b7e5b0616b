#!/usr/bin/env node
'use strict';
// npm's `prepare` (run by `npm ci` and `npm install` in a checkout): builds dist/, so that
// `npm ci && npm start`, `npm run start:gateway` and `npx aqueduct` work on a fresh clone.
// Only an install runs it: `npx aqueduct` runs the linked workspace bin in place (bin/), so a
// CLI run never rebuilds dist/ under a running gateway.
// An install without dev dependencies (`npm ci --omit=dev`) has no compiler: it keeps the
// dist/ that came with the tree instead of failing the install with "nest: not found".
const { spawnSync } = require('node:child_process');
const { existsSync } = require('node:fs');
const { join } = require('node:path');

const root = join(__dirname, '..');
const entries = [
  'dist/apps/gateway/apps/gateway/src/main.js',
  'dist/apps/worker/apps/worker/src/main.js',
  'dist/apps/cli/apps/cli/src/main.js',
].map((file) => join(root, file));

function hasBuildTools() {
  try {
    require.resolve('@nestjs/cli/package.json', { paths: [root] });
    return true;
  } catch {
    return false;
  }
}

if (hasBuildTools()) {
  const build = spawnSync('npm', ['run', 'build'], { cwd: root, stdio: 'inherit' });
  process.exit(build.status ?? 1);
} else if (entries.every((file) => existsSync(file))) {
  process.stderr.write('aqueduct: no dev dependencies installed; keeping the existing dist/ (not rebuilt)\n');
} else {
  process.stderr.write(
    'aqueduct: dist/ is not built and the build tools are not installed (dev dependencies omitted).\n' +
      '  Build in a full install (`npm ci`, which builds), then `npm prune --omit=dev`,\n' +
      '  or copy dist/ from a build.\n',
  );
  process.exit(1);
}
