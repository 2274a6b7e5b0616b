#!/usr/bin/env node
'use strict';
// Entry point of `npx aqueduct`: runs the compiled CLI (built by `npm ci` via `prepare`).
const { existsSync } = require('node:fs');
const { join } = require('node:path');

const main = join(__dirname, '..', 'dist', 'apps', 'cli', 'apps', 'cli', 'src', 'main.js');
if (!existsSync(main)) {
  process.stderr.write('aqueduct: the CLI is not built yet; run `npm run build` first.\n');
  process.exit(1);
}
require(main);
