#!/usr/bin/env node
'use strict';
// The `aqueduct` operator command: `npx aqueduct …` in a checkout (npm links it into
// node_modules/.bin as the workspace package in this folder, so npx runs it in place instead of
// installing and rebuilding the project), `aqueduct …` in the image (a symlink on PATH), or
// `node bin/aqueduct.js …` anywhere. It only loads the compiled CLI: it never builds, so it is
// safe next to a running gateway and works in an install without dev dependencies.
const { existsSync } = require('node:fs');
const { join } = require('node:path');

// __dirname is this file's real directory, also when it is started through a symlink.
const root = join(__dirname, '..');
const main = join(root, 'dist', 'apps', 'cli', 'apps', 'cli', 'src', 'main.js');
if (!existsSync(main)) {
  process.stderr.write(
    [
      `aqueduct: the CLI is not built: ${main} is missing.`,
      `  In a checkout: run \`npm ci\` (it builds) or \`npm run build\` in ${root}.`,
      '  An install without dev dependencies (npm ci --omit=dev) cannot build: copy dist/ from a build',
      '  (the container image has it).',
      '',
    ].join('\n'),
  );
  process.exit(1);
}
require(main);
