import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import {
  cpSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  symlinkSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join } from 'node:path';
import Redis from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { redisNames, TokenStore } from '../../libs/common/src';
import { EXPOSED_HEADERS } from '../../apps/gateway/src/http/api-cors';
import { streamedText } from '../support/contract-helpers';
import { type LiveStream, openStream, sseOf } from '../support/http';
import { simulatorDeployment, writeModelList } from '../support/router-config';
import { deleteByPrefix, freePort, REDIS_URL, ROOT, Stack, uniquePrefix } from '../support/stack';
import { waitUntil } from '../support/wait';

/**
 * Issue 10, items 1 and 7: packaging as operators meet it. The CLI on a fresh clone after the
 * README's install (`npm ci`), and in a production install without dev dependencies: fast,
 * and never rebuilding dist/ (as `npx aqueduct` did by installing the folder and running
 * `prepare`). The image's real entrypoint and command line under tini, in a process group of
 * its own as in a container: SIGTERM reaches node, which drains. And what browsers need from
 * the API: every header readable (CORS), OPTIONS answered alike on every known route.
 */

/** The environment of a shell on this machine, minus what `npm test` adds for its own scripts. */
function shellEnv(extra: Record<string, string> = {}): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(process.env)) {
    if (v !== undefined && !k.toLowerCase().startsWith('npm_') && k !== 'INIT_CWD' && !k.startsWith('VITEST')) {
      env[k] = v;
    }
  }
  // The node running the tests (Node 24) first, for `node` and for npm's `#!/usr/bin/env node`.
  env.PATH = [dirname(process.execPath), process.env.PATH ?? ''].join(delimiter);
  return { ...env, ...extra };
}

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
  ms: number;
}

/** Runs a command to its end (asynchronously, so the test's own timers keep running). */
function run(cmd: string, args: string[], cwd: string, env: Record<string, string>, timeoutMs = 600_000): Promise<Run> {
  const started = Date.now();
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { cwd, env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs);
    child.once('error', reject);
    child.once('exit', (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr, ms: Date.now() - started });
    });
  });
}

function expectOk(r: Run, what: string): void {
  expect(r.code, `${what} failed:\n${r.stdout.slice(-3000)}\n${r.stderr.slice(-3000)}`).toBe(0);
}

/** Every file under `dir` with its modification time: a rebuild shows as a change. */
function mtimes(dir: string): Map<string, number> {
  const out = new Map<string, number>();
  const walk = (d: string) => {
    for (const e of readdirSync(d, { withFileTypes: true })) {
      const p = join(d, e.name);
      if (e.isDirectory()) {
        walk(p);
      } else {
        out.set(p.slice(dir.length), statSync(p).mtimeMs);
      }
    }
  };
  walk(dir);
  return out;
}

/** The tracked and untracked-but-not-ignored files of the working tree: what a commit of it would hold. */
function workingTreeFiles(): { present: string[]; deleted: string[] } {
  const list = (...args: string[]) =>
    spawnSync('git', ['ls-files', '-z', ...args], { cwd: ROOT, encoding: 'utf8' })
      .stdout.split('\0')
      .filter(Boolean);
  const deleted = list('--deleted');
  return { present: list('--cached', '--others', '--exclude-standard').filter((f) => !deleted.includes(f)), deleted };
}

const hasGit = spawnSync('git', ['rev-parse', '--git-dir'], { cwd: ROOT }).status === 0;

describe.skipIf(!hasGit)('the aqueduct CLI on a fresh clone and in a production install', () => {
  const prefix = uniquePrefix('pkg-cli');
  const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 });
  const work = mkdtempSync(join(tmpdir(), 'aqueduct-pkg-'));
  const clone = join(work, 'clone');
  const prod = join(work, 'prod');
  const cliEnv = (extra: Record<string, string> = {}) =>
    shellEnv({ REDIS_URL, AQUEDUCT_REDIS_PREFIX: prefix, LOG_LEVEL: 'warn', ...extra });
  // npm's cache, as a developer's machine has it after the repository's own `npm ci`.
  const install = ['ci', '--prefer-offline', '--no-audit', '--no-fund'];

  beforeAll(async () => {
    // A clone of this repository, carrying the working tree's changes, so what is tested is
    // what would be committed; then the README's install, which builds (prepare).
    expect(spawnSync('git', ['clone', '--quiet', '--no-hardlinks', ROOT, clone]).status).toBe(0);
    const { present, deleted } = workingTreeFiles();
    for (const f of present) {
      if (existsSync(join(ROOT, f)) && statSync(join(ROOT, f)).isFile()) {
        mkdirSync(dirname(join(clone, f)), { recursive: true });
        cpSync(join(ROOT, f), join(clone, f));
      }
    }
    for (const f of deleted) {
      rmSync(join(clone, f), { force: true });
    }
    expect(existsSync(join(clone, 'dist')), 'a fresh clone has no dist/').toBe(false);
    expectOk(await run('npm', install, clone, shellEnv()), 'npm ci in the clone');

    // A production install, as a host without Docker (or the image's prod-deps stage) has it:
    // the built tree without node_modules, then `npm ci --omit=dev`, which runs `prepare` too.
    cpSync(clone, prod, {
      recursive: true,
      verbatimSymlinks: true,
      filter: (src) => !src.startsWith(join(clone, 'node_modules')),
    });
    expectOk(await run('npm', [...install, '--omit=dev'], prod, shellEnv()), 'npm ci --omit=dev');
  }, 900_000);

  afterAll(async () => {
    await deleteByPrefix(redis, prefix);
    await redis.quit();
    rmSync(work, { recursive: true, force: true });
  });

  /** `npx aqueduct tokens create --json` in `dir`: its run, the token it printed, and whether npx installed anything. */
  async function npxCreate(dir: string, name: string) {
    const npmCache = mkdtempSync(join(work, 'npm-cache-'));
    const before = mtimes(join(dir, 'dist'));
    const r = await run(
      'npx',
      ['aqueduct', 'tokens', 'create', '--name', name, '--json'],
      dir,
      cliEnv({ npm_config_cache: npmCache }),
      60_000,
    );
    expectOk(r, `npx aqueduct in ${dir}`);
    return {
      r,
      token: JSON.parse(r.stdout) as { id: string; key: string; name: string },
      installed: existsSync(join(npmCache, '_npx')),
      rebuilt: [...mtimes(join(dir, 'dist'))].filter(([f, t]) => before.get(f) !== t).map(([f]) => f),
    };
  }

  it('runs `npx aqueduct tokens create --json` on a fresh clone in under 2 s, installing and rebuilding nothing', async () => {
    const { r, token, installed, rebuilt } = await npxCreate(clone, 'fresh-clone');
    expect(token.key).toMatch(/^sk-aq-[A-Za-z0-9_-]{43}$/);
    expect(token.name).toBe('fresh-clone');
    expect(await new TokenStore(redis, redisNames(prefix)).list()).toContainEqual(
      expect.objectContaining({ id: token.id }),
    );
    expect(installed, 'npx installed the project into its cache').toBe(false);
    expect(rebuilt, 'dist/ files rewritten by a CLI run').toEqual([]);
    expect(r.ms, `took ${r.ms} ms`).toBeLessThan(2_000);
  });

  it('runs the same in a production install (npm ci --omit=dev), where nothing could build', async () => {
    expect(existsSync(join(prod, 'node_modules/@nestjs/cli')), 'dev dependencies omitted').toBe(false);
    expect(existsSync(join(prod, 'node_modules/.bin/aqueduct')), 'the bin link').toBe(true);
    const { r, token, installed, rebuilt } = await npxCreate(prod, 'prod-install');
    expect(token.key).toMatch(/^sk-aq-/);
    expect(installed).toBe(false);
    expect(rebuilt).toEqual([]);
    expect(r.ms, `took ${r.ms} ms`).toBeLessThan(2_000);
  });

  it('is the `aqueduct` command through a symlink on PATH, as in the image, and `node bin/aqueduct.js`', async () => {
    // The Dockerfile links /usr/local/bin/aqueduct to /app/bin/aqueduct.js.
    const link = join(work, 'path-bin');
    mkdirSync(link, { recursive: true });
    symlinkSync(join(prod, 'bin/aqueduct.js'), join(link, 'aqueduct'));
    const env = cliEnv();
    env.PATH = [link, env.PATH].join(delimiter);
    const viaPath = await run('aqueduct', ['tokens', 'create', '--name', 'on-path', '--json'], tmpdir(), env, 30_000);
    expectOk(viaPath, 'aqueduct on PATH');
    expect((JSON.parse(viaPath.stdout) as { key: string }).key).toMatch(/^sk-aq-/);
    expect(viaPath.ms, `took ${viaPath.ms} ms`).toBeLessThan(2_000);

    const viaNode = await run(
      process.execPath,
      ['bin/aqueduct.js', 'tokens', 'list', '--json'],
      prod,
      cliEnv(),
      30_000,
    );
    expectOk(viaNode, 'node bin/aqueduct.js');
    expect((JSON.parse(viaNode.stdout) as { name: string }[]).map((t) => t.name)).toContain('on-path');
  });

  it('says what is missing, and exits non-zero, where dist/ is not built', async () => {
    const bare = join(work, 'bare');
    // verbatimSymlinks: the bin links stay relative, into this copy (not back into prod/).
    cpSync(prod, bare, {
      recursive: true,
      verbatimSymlinks: true,
      filter: (src) => !src.startsWith(join(prod, 'dist')),
    });
    for (const [cmd, args] of [
      ['npx', ['aqueduct', 'tokens', 'list']],
      [process.execPath, ['bin/aqueduct.js', 'tokens', 'list']],
    ] as const) {
      const r = await run(cmd, [...args], bare, cliEnv(), 30_000);
      expect(r.code, `${cmd}: ${r.stderr}`).toBe(1);
      expect(r.stderr).toContain('aqueduct: the CLI is not built');
      expect(r.stderr).toContain('npm run build');
    }
    expect(existsSync(join(bare, 'dist')), 'the CLI never builds').toBe(false);
  });
});

/** The runtime stage of the Dockerfile: its ENV, ENTRYPOINT and CMD as Docker reads them. */
function dockerRuntime(): { env: Record<string, string>; entrypoint: string[]; cmd: string[] } {
  const text = readFileSync(join(ROOT, 'Dockerfile'), 'utf8').replace(/\\\n/g, ' ');
  const runtime = text.slice(text.lastIndexOf('\nFROM '));
  const env: Record<string, string> = {};
  for (const line of runtime.match(/^ENV .+$/gm) ?? []) {
    for (const m of line.slice(4).matchAll(/([A-Za-z_][A-Za-z0-9_]*)=("(?:[^"\\]|\\.)*"|\S*)/g)) {
      const value = m[2] ?? '';
      const v = value.startsWith('"') ? (JSON.parse(value) as string) : value;
      // WORKDIR /app is the tree here (NODE_OPTIONS preloads /app/scripts/heap-growing.js).
      env[m[1] as string] = v.replaceAll('/app/', `${ROOT}/`);
    }
  }
  const json = (instr: string) => {
    const m = new RegExp(`^${instr} (\\[.*\\])$`, 'm').exec(runtime);
    return m === null ? [] : (JSON.parse(m[1] as string) as string[]);
  };
  return { env, entrypoint: json('ENTRYPOINT'), cmd: json('CMD') };
}

function which(cmd: string): string | undefined {
  const r = spawnSync('sh', ['-c', `command -v ${cmd}`], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : undefined;
}

/** A container's main process as Docker starts it: ENTRYPOINT + command, in a process group of its own. */
interface Container {
  child: ChildProcess;
  output: () => string;
  exited: Promise<{ code: number | null; at: number }>;
}

function startContainer(tini: string, entrypoint: string[], command: string[], env: Record<string, string>): Container {
  // The image's tini is /usr/bin/tini; this machine's may live elsewhere.
  const [, ...tiniArgs] = entrypoint;
  const child = spawn(tini, [...tiniArgs, ...command], {
    cwd: ROOT, // WORKDIR /app: the command's paths are relative to the tree
    env,
    detached: true,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '';
  child.stdout?.on('data', (d: Buffer) => (out += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (out += d.toString()));
  const exited = new Promise<{ code: number | null; at: number }>((resolve) =>
    child.once('exit', (code) => resolve({ code, at: Date.now() })),
  );
  return { child, output: () => out, exited };
}

const tini = which('tini');
const dockerfile = dockerRuntime();
/** The image's entrypoint; without one, what `docker run --init` would put in front of node. */
const entrypoint = dockerfile.entrypoint.length > 0 ? dockerfile.entrypoint : ['tini', '-s', '--'];

describe('the image entrypoint under tini', () => {
  if (tini === undefined) {
    it.skip('needs tini on this machine (apt-get install tini) to run the image entrypoint', () => undefined);
  }

  it('is tini, then node itself in exec form for both roles', () => {
    expect(dockerfile.entrypoint[0]).toMatch(/(^|\/)tini$/);
    expect(dockerfile.entrypoint.at(-1)).toBe('--');
    expect(dockerfile.cmd).toEqual(['node', 'dist/apps/gateway/apps/gateway/src/main.js']);
    const compose = parse(readFileSync(join(ROOT, 'docker-compose.yml'), 'utf8'), { merge: true }) as {
      services: Record<string, { command?: string[]; init?: boolean }>;
    };
    expect(compose.services.worker?.command).toEqual(['node', 'dist/apps/worker/apps/worker/src/main.js']);
    for (const s of ['gateway', 'worker']) {
      expect(compose.services[s]?.command?.join(' '), s).not.toMatch(/\bnpm\b|\bsh\b/);
    }
  });

  it.skipIf(tini === undefined)(
    'passes SIGTERM to node: two streams in flight finish, then gateway and worker exit cleanly',
    async () => {
      const prefix = uniquePrefix('pkg-tini');
      const port = await freePort();
      const redis = new Redis(REDIS_URL, { maxRetriesPerRequest: 1 });
      const compose = parse(readFileSync(join(ROOT, 'docker-compose.yml'), 'utf8'), { merge: true }) as {
        services: Record<string, { command: string[] }>;
      };
      // Tokens 150 ms apart: each stream lasts seconds, well within the grace below.
      const config = writeModelList(simulatorDeployment('slow', 'lorem', { ttft_ms: 50, itl_ms: 150 }));
      const env = shellEnv({
        ...dockerfile.env,
        REDIS_URL,
        AQUEDUCT_REDIS_PREFIX: prefix,
        AQUEDUCT_CONFIG: config,
        PORT: String(port),
        HOST: '127.0.0.1',
        AQUEDUCT_HEARTBEAT_MS: '300',
        AQUEDUCT_SHUTDOWN_GRACE_MS: '15000',
        WORKER_METRICS_PORT: '0',
        LOG_LEVEL: 'info',
      });
      const gateway = startContainer(tini as string, entrypoint, dockerfile.cmd, env);
      const worker = startContainer(tini as string, entrypoint, compose.services.worker?.command ?? [], env);
      const base = `http://127.0.0.1:${port}`;
      try {
        await waitUntil(
          'the gateway to be ready with a worker',
          async () => (await fetch(`${base}/ready`).catch(() => undefined))?.status === 200,
          30_000,
          100,
        );
        const { key } = await new TokenStore(redis, redisNames(prefix)).create({ name: 'tini' });
        const body = { model: 'slow', prompt: 'drain me', max_tokens: 24, stream: true };
        // The simulator is deterministic: a finished stream carries exactly this text.
        const reference = await fetch(`${base}/v1/completions`, {
          method: 'POST',
          headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
          body: JSON.stringify({ ...body, stream: false }),
        });
        expect(reference.status).toBe(200);
        const whole = ((await reference.json()) as { choices: { text: string }[] }).choices[0]?.text ?? '';
        expect(whole.length).toBeGreaterThan(0);
        const streams: LiveStream[] = [openStream(base, key, body), openStream(base, key, body)];
        await waitUntil('both streams to be under way', () => streams.every((s) => s.events.length >= 2), 10_000);

        // `docker stop`: SIGTERM to the container's PID 1 only (tini), not to its process group.
        const signalledAt = Date.now();
        for (const c of [gateway, worker]) {
          process.kill(c.child.pid as number, 'SIGTERM');
        }
        await Promise.all(streams.map((s) => s.finished));
        const [g, w] = await Promise.all([gateway.exited, worker.exited]);

        for (const s of streams) {
          const sse = sseOf(s);
          expect(s.status).toBe(200);
          expect(sse.errors, JSON.stringify(sse.errors)).toEqual([]);
          expect(sse.data.at(-1)).toBe('[DONE]');
          expect(sse.chunks.at(-1)?.choices[0]?.finish_reason).toMatch(/^(stop|length)$/);
          expect(streamedText(sse)).toBe(whole);
          expect(s.endedAt as number, 'the stream ran on after SIGTERM').toBeGreaterThan(signalledAt + 500);
        }
        // A clean exit: 0, or 143 (128 + SIGTERM) when the process ends by re-raising the signal
        // once its shutdown hooks are done (Nest's enableShutdownHooks does), as tini reports it.
        // Not 137 (SIGKILL) nor 1 (a crash or the forced deadline).
        expect([0, 143], gateway.output()).toContain(g.code);
        expect([0, 143], worker.output()).toContain(w.code);
        // They drained first: neither exited before the streams it served had ended.
        const lastEnd = Math.max(...streams.map((s) => s.endedAt as number));
        expect(w.at).toBeGreaterThanOrEqual(lastEnd - 50);
        expect(g.at).toBeGreaterThanOrEqual(lastEnd - 50);
        // tini itself says nothing: every line is the app's JSON.
        for (const line of `${gateway.output()}${worker.output()}`.split('\n').filter(Boolean)) {
          expect(() => JSON.parse(line) as unknown, line).not.toThrow();
        }
      } finally {
        for (const c of [gateway, worker]) {
          if (c.child.exitCode === null && c.child.signalCode === null) {
            process.kill(-(c.child.pid as number), 'SIGKILL');
          }
        }
        await deleteByPrefix(redis, prefix);
        await redis.quit();
      }
    },
    60_000,
  );
});

describe('browsers', () => {
  let stack: Stack;
  const ORIGIN = 'https://app.example';

  beforeAll(async () => {
    stack = await Stack.start('pkg-cors', { env: { WORKER_METRICS_PORT: '0' } });
  });

  afterAll(async () => {
    await stack?.stop();
  });

  const complete = (key: string) =>
    fetch(`${stack.baseUrl}/v1/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json', origin: ORIGIN },
      body: JSON.stringify({ model: 'sim', prompt: 'hi', max_tokens: 2 }),
    });
  const exposedOf = (res: Response) =>
    (res.headers.get('access-control-expose-headers') ?? '').split(',').map((h) => h.trim().toLowerCase());
  /** The headers a script could not read without CORS listing them: all but the safelisted ones. */
  const ours = (res: Response) => [...res.headers.keys()].filter((h) => /^(x-|retry-after)/.test(h));

  it('may read every x-ratelimit-*, x-request-id, x-aqueduct-* and retry-after header of an API response', async () => {
    // Every limit set, so the response carries the whole x-ratelimit-* family.
    const key = await stack.createKey({
      requests_per_minute: 1,
      input_tokens_per_minute: 100_000,
      output_tokens_per_minute: 100_000,
    });
    const ok = await complete(key);
    expect(ok.status).toBe(200);
    expect(ok.headers.get('access-control-allow-origin')).toBe('*');
    for (const h of ['x-request-id', 'x-ratelimit-limit-input-tokens', 'x-ratelimit-reset-output-tokens']) {
      expect(ours(ok), 'the gateway sends it').toContain(h);
    }
    const refused = await complete(key);
    expect(refused.status).toBe(429);
    expect(ours(refused)).toEqual(expect.arrayContaining(['retry-after', 'retry-after-ms']));
    for (const res of [ok, refused]) {
      const exposed = exposedOf(res);
      for (const h of ours(res)) {
        expect(exposed, `${h} (status ${res.status})`).toContain(h);
      }
    }
    // Also the ones this response did not happen to carry.
    const everyRateLimit = ['requests', 'tokens', 'input-tokens', 'output-tokens'].flatMap((b) =>
      ['limit', 'remaining', 'reset'].map((f) => `x-ratelimit-${f}-${b}`),
    );
    expect(exposedOf(ok)).toEqual(
      expect.arrayContaining([
        ...everyRateLimit,
        'x-request-id',
        'x-aqueduct-queue-ms',
        'retry-after',
        'retry-after-ms',
      ]),
    );
    expect([...EXPOSED_HEADERS].sort()).toEqual(exposedOf(ok).sort());
  });

  it('gets its CORS preflight answered on the API routes', async () => {
    for (const [path, method] of [
      ['/v1/completions', 'POST'],
      ['/v1/models', 'GET'],
    ]) {
      const res = await fetch(`${stack.baseUrl}${path}`, {
        method: 'OPTIONS',
        headers: {
          origin: ORIGIN,
          'access-control-request-method': method as string,
          'access-control-request-headers': 'authorization,content-type,x-stainless-os',
        },
      });
      expect(res.status, path).toBe(204);
      expect(res.headers.get('access-control-allow-origin')).toBe('*');
      expect(res.headers.get('access-control-allow-methods')).toContain(method);
      expect(res.headers.get('access-control-allow-headers')).toBe('authorization,content-type,x-stainless-os');
      expect(res.headers.get('allow')?.split(', ')).toContain(method);
    }
  });

  it('answers OPTIONS alike on every known route (204 and Allow), and 404 on unknown ones', async () => {
    const options = (path: string) => fetch(`${stack.baseUrl}${path}`, { method: 'OPTIONS' });
    for (const [path, allow] of [
      ['/health', 'GET, HEAD, OPTIONS'],
      ['/ready', 'GET, HEAD, OPTIONS'],
      ['/metrics', 'GET, HEAD, OPTIONS'],
      ['/v1/models', 'GET, HEAD, OPTIONS'],
      ['/v1/models/sim', 'GET, HEAD, OPTIONS'],
      ['/v1/completions', 'POST, OPTIONS'],
      ['/completions', 'POST, OPTIONS'],
    ]) {
      const res = await options(path as string);
      expect(res.status, path).toBe(204);
      expect(res.headers.get('allow'), path).toBe(allow);
      expect(await res.text()).toBe('');
    }
    // Ops routes are not for browsers on other origins: no CORS there.
    expect((await options('/health')).headers.get('access-control-allow-origin')).toBeNull();

    // A wrong method's 405 lists OPTIONS, and OPTIONS is indeed answered (above).
    const wrong = await fetch(`${stack.baseUrl}/health`, { method: 'DELETE' });
    expect(wrong.status).toBe(405);
    expect(wrong.headers.get('allow')).toBe('GET, HEAD, OPTIONS');

    // Unknown routes, and the admin API of a gateway without an admin key, do not exist.
    for (const path of ['/nope', '/admin/tokens', '/v1/health']) {
      const res = await options(path);
      expect(res.status, path).toBe(404);
      expect(((await res.json()) as { error: { code: string } }).error.code).toBe('unknown_url');
    }
  });
});
