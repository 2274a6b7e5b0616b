import { execFileSync, spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { ROOT } from '../support/stack';

/**
 * Operations, item 5: the deployment files. `docker-compose config` (Debian's 1.29, or the
 * compose plugin) parses and checks docker-compose.yml; the checks below then read what it
 * resolved. Containers cannot run here, so the file is what is tested, not a live cluster.
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
  environment?: Record<string, string>;
  healthcheck?: { test: string[] };
  depends_on?: Record<string, { condition: string }>;
  stop_grace_period?: string;
  ports?: unknown[];
  container_name?: string;
}

const compose = composeCommand();

describe('deployment files', () => {
  it.skipIf(compose === undefined)('docker-compose.yml validates and wires Redis, gateway and workers', () => {
    const [cmd, ...args] = compose as string[];
    const resolved = execFileSync(cmd as string, [...args, '-f', join(ROOT, 'docker-compose.yml'), 'config'], {
      cwd: ROOT,
      env: { PATH: process.env.PATH ?? '', AQUEDUCT_ADMIN_KEY: 'compose-admin-key-0123456789' },
      encoding: 'utf8',
    });
    const { services } = parse(resolved) as { services: Record<string, Service> };
    expect(Object.keys(services).sort()).toEqual(['gateway', 'redis', 'worker']);

    const redis = (services.redis?.command ?? []).join(' ');
    expect(redis).toMatch(/--appendonly yes/);
    expect(redis).toMatch(/--maxmemory-policy noeviction/);
    expect(services.redis?.healthcheck?.test.join(' ')).toContain('redis-cli ping');

    for (const name of ['gateway', 'worker']) {
      const s = services[name] as Service;
      expect(s.depends_on?.redis?.condition, name).toBe('service_healthy');
      expect(s.healthcheck?.test.join(' '), name).toMatch(/fetch\('http:\/\/127\.0\.0\.1:\d+\/(ready|health)'\)/);
      expect(s.environment?.REDIS_URL, name).toBe('redis://redis:6379');
      expect(s.stop_grace_period, name).toBeDefined();
    }
    expect(services.gateway?.healthcheck?.test.join(' ')).toContain(':8000/ready');
    expect(services.worker?.healthcheck?.test.join(' ')).toContain(
      `:${services.worker?.environment?.WORKER_METRICS_PORT}/health`,
    );
    // Scalable workers: nothing that would clash between replicas.
    expect(services.worker?.ports).toBeUndefined();
    expect(services.worker?.container_name).toBeUndefined();
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
});
