'use strict';
// Preloaded by the image (NODE_OPTIONS="--require=/app/scripts/heap-growing.js"): the same
// V8 flag as `--heap-growing-percent=50` in `npm run start:*` and scripts/start-all.js, which
// NODE_OPTIONS does not accept. V8 reads it at every full GC, so setting it at startup is
// enough: the old generation may grow to 1.5x the live heap before the next full GC, not the
// up to 4x V8 picks for throughput (README, "Memory").
require('node:v8').setFlagsFromString('--heap-growing-percent=50');
