import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { ROOT } from '../support/stack';

/**
 * Operations, item 5: the deployment files. `docker-compose config` (Debian's 1.29, or the
 * compose plugin) parses and checks docker-compose.yml; the checks below then read what it
 * resolved. Containers cannot run here, so the file is what is tested, not a live cluster. The
 * compose checks skip where neither command is installed: CI machines have no apt to rely on.
 */

function composeCommand(): string[] | undefined {
  for (const cmd of [['docker-compose'], ['docker', 'compose']]) {
    const r = spawnSync(cmd[0] as string, [...cmd.slice(1), 'version'], { stdio: 'ignore' });
    if (r.status === 0) {
      return cmd;
    }
  }
  return undefined;
}

interface Service {
  command?: string[];
  image?: string;
  environment?: Record<string, string>;
  healthcheck?: { test: string[] };
  depends_on?: Record<string, { condition: string }>;
  stop_grace_period?: string;
  ports?: unknown[];
  container_name?: string;
}

const compose = composeCommand();
/** URL-safe, as the compose file asks for. */
const REDIS_PASSWORD = 'compose-redis-pw-0123456789abcdef';

function composeConfig(env: Record<string, string>): ReturnType<typeof spawnSync> {
  const [cmd, ...args] = compose as string[];
  return spawnSync(cmd as string, [...args, '-f', join(ROOT, 'docker-compose.yml'), 'config'], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', ...env },
    encoding: 'utf8',
  });
}

describe('deployment files', () => {
  it.skipIf(compose === undefined)('docker-compose.yml validates and wires Redis, gateway and workers', () => {
    const run = composeConfig({ AQUEDUCT_ADMIN_KEY: 'compose-admin-key-0123456789', REDIS_PASSWORD });
    expect(run.status, String(run.stderr)).toBe(0);
    const { services } = parse(String(run.stdout)) as { services: Record<string, Service> };
    expect(Object.keys(services).sort()).toEqual(['gateway', 'redis', 'worker']);

    const redis = (services.redis?.command ?? []).join(' ');
    expect(redis).toMatch(/--appendonly yes/);
    expect(redis).toMatch(/--maxmemory-policy noeviction/);
    // Redis is a trust boundary: a password, no host port, the pub/sub buffer limit spelled out.
    expect(redis).toContain(`--requirepass ${REDIS_PASSWORD}`);
    expect(redis).toContain('--client-output-buffer-limit pubsub 32mb 8mb 60');
    expect(services.redis?.ports).toBeUndefined();
    expect(services.redis?.healthcheck?.test.join(' ')).toContain('redis-cli ping');
    expect(services.redis?.environment?.REDISCLI_AUTH, 'the healthcheck authenticates').toBe(REDIS_PASSWORD);

    for (const name of ['gateway', 'worker']) {
      const s = services[name] as Service;
      expect(s.depends_on?.redis?.condition, name).toBe('service_healthy');
      expect(s.healthcheck?.test.join(' '), name).toMatch(/fetch\('http:\/\/127\.0\.0\.1:\d+\/(ready|health)'\)/);
      expect(s.environment?.REDIS_URL, name).toBe(`redis://:${REDIS_PASSWORD}@redis:6379`);
      expect(s.stop_grace_period, name).toBeDefined();
      // node itself, not npm: SIGTERM must reach the process that drains.
      expect(s.command?.[0], name).toBe('node');
    }
    expect(services.gateway?.healthcheck?.test.join(' ')).toContain(':8000/ready');
    expect(services.worker?.healthcheck?.test.join(' ')).toContain(
      `:${services.worker?.environment?.WORKER_METRICS_PORT}/health`,
    );
    // Scalable workers: nothing that would clash between replicas.
    expect(services.worker?.ports).toBeUndefined();
    expect(services.worker?.container_name).toBeUndefined();
  });

  it.skipIf(compose === undefined)('docker-compose.yml refuses to start without REDIS_PASSWORD', () => {
    const run = composeConfig({});
    expect(run.status).not.toBe(0);
    expect(String(run.stderr)).toContain('set REDIS_PASSWORD');
  });

  it('the Dockerfile builds in stages and runs as an unprivileged user', () => {
    const dockerfile = readFileSync(join(ROOT, 'Dockerfile'), 'utf8');
    const stages = dockerfile.match(/^FROM .+$/gm) ?? [];
    expect(stages.length).toBeGreaterThanOrEqual(2);
    const runtime = dockerfile.slice(dockerfile.lastIndexOf('\nFROM '));
    expect(runtime).toMatch(/^USER node$/m);
    expect(runtime).not.toMatch(/^USER root$/m);
    expect(runtime).toMatch(/--from=build/);
    expect(runtime).toMatch(/^EXPOSE .*8000/m);
  });

  it('the image runs Node 24 LTS, node itself in exec form, with the heap flags', () => {
    const dockerfile = readFileSync(join(ROOT, 'Dockerfile'), 'utf8');
    // A pinned release: the same one as CI (.ci/run NODE_VERSION).
    const image = /^ARG NODE_IMAGE=node:(\d+)\.(\d+)\.(\d+)-[a-z]+(-slim)?$/m.exec(dockerfile);
    expect(image, 'ARG NODE_IMAGE=node:24.x.y-<distro>').not.toBeNull();
    expect(image?.[1]).toBe('24');
    const ci = readFileSync(join(ROOT, '.ci/run'), 'utf8');
    expect(ci).toContain(`NODE_VERSION=${image?.slice(1, 4).join('.')}`);
    const runtime = dockerfile.slice(dockerfile.lastIndexOf('\nFROM '));
    const cmd = /^CMD (\[.*\])$/m.exec(runtime)?.[1];
    expect(JSON.parse(cmd ?? 'null')).toEqual(['node', 'dist/apps/gateway/apps/gateway/src/main.js']);
    expect(runtime).toMatch(/NODE_OPTIONS="[^"]*--max-semi-space-size=\d+/);
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as {
      engines: { node: string };
      scripts: Record<string, string>;
    };
    expect(pkg.engines.node).toBe('>=24');
    for (const script of ['start:gateway', 'start:worker']) {
      expect(pkg.scripts[script], script).toMatch(/^node .*--max-semi-space-size=\d+/);
    }
  });
});
