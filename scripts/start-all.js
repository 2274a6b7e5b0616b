#!/usr/bin/env node
'use strict';
// `npm start`: the all-in-one mode, one gateway and one worker as two child processes,
// exactly as they run when scaled separately. A signal is passed on to both; when one
// exits, the other is stopped too, so the pair never half-runs.
const { spawn, execSync } = require('node:child_process');
const { existsSync } = require('node:fs');
const { join } = require('node:path');

const root = join(__dirname, '..');
const entries = {
  gateway: join(root, 'dist/apps/gateway/apps/gateway/src/main.js'),
  worker: join(root, 'dist/apps/worker/apps/worker/src/main.js'),
};
if (!Object.values(entries).every(existsSync)) {
  execSync('npm run build', { cwd: root, stdio: 'inherit' });
}

// The same node flags as `npm run start:gateway` / `start:worker` and the image: on Node 24,
// V8 sizes the heap for throughput and each process grows to ~300 MB RSS under load (c=64);
// 16 MB semi-spaces (Node 20's size) and an old generation that grows to 1.5x the live heap
// between full GCs hold it near 200 MB at the same CPU per request (README, "Memory").
const NODE_FLAGS = ['--enable-source-maps', '--max-semi-space-size=16', '--heap-growing-percent=50'];

const children = Object.entries(entries).map(([name, file]) => {
  const child = spawn(process.execPath, [...NODE_FLAGS, file], { stdio: 'inherit', env: process.env });
  child.on('exit', (code, signal) => {
    if (!stopping) {
      process.stderr.write(`aqueduct: ${name} exited (${signal ?? code}); stopping\n`);
      stop('SIGTERM', code ?? 1);
    }
  });
  return child;
});

let stopping = false;
let exitCode = 0;
function stop(signal, code) {
  stopping = true;
  exitCode = code;
  for (const c of children) {
    if (c.exitCode === null && c.signalCode === null) {
      c.kill(signal);
    }
  }
}
for (const signal of ['SIGINT', 'SIGTERM']) {
  process.on(signal, () => stop(signal, 0));
}
let remaining = children.length;
for (const c of children) {
  c.on('exit', () => {
    remaining -= 1;
    if (remaining === 0) {
      process.exit(exitCode);
    }
  });
}
