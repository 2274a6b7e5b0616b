import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { ROOT } from '../support/stack';

/**
 * Operations, item 5, and issue 10, item 8: the deployment files. `docker-compose config` (Debian's 1.29, or the
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
  init?: boolean;
  profiles?: string[];
  volumes?: unknown[];
  expose?: unknown[];
  restart?: string;
}

/** A published port as compose resolved it (short string or long form): host address and port, container port. */
function published(port: unknown): { host: string; published: string; target: string } {
  if (typeof port === 'string') {
    const parts = port.replace(/\/tcp$/, '').split(':');
    const target = parts.pop() ?? '';
    const pub = parts.pop() ?? '';
    return { host: parts.join(':'), published: pub, target };
  }
  const p = port as { host_ip?: string; published?: string | number; target: string | number };
  return { host: p.host_ip ?? '', published: String(p.published ?? ''), target: String(p.target) };
}

const compose = composeCommand();
/** URL-safe, as the compose file asks for. */
const REDIS_PASSWORD = 'compose-redis-pw-0123456789abcdef';

/** Writes an env file for the compose file to read; returns its path. */
function envFile(lines: Record<string, string>): string {
  const file = join(mkdtempSync(join(tmpdir(), 'aqueduct-compose-')), 'role.env');
  writeFileSync(
    file,
    Object.entries(lines)
      .map(([k, v]) => `${k}=${v}\n`)
      .join(''),
  );
  return file;
}

/** `docker-compose config`; `options` go before `config` (e.g. `--profile cluster`). */
function composeConfig(env: Record<string, string>, options: string[] = []): ReturnType<typeof spawnSync> {
  const [cmd, ...args] = compose as string[];
  return spawnSync(cmd as string, [...args, '-f', join(ROOT, 'docker-compose.yml'), ...options, 'config'], {
    cwd: ROOT,
    env: { PATH: process.env.PATH ?? '', ...env },
    encoding: 'utf8',
  });
}

describe('deployment files', () => {
  it.skipIf(compose === undefined)('docker-compose.yml validates and wires Redis, gateway and workers', () => {
    const run = composeConfig({ REDIS_PASSWORD });
    expect(run.status, String(run.stderr)).toBe(0);
    const { services } = parse(String(run.stdout)) as { services: Record<string, Service> };
    // What `docker compose up` starts. (Debian's 1.29 lists the services of every profile too;
    // the plugin only those of the profiles enabled.)
    const started = Object.keys(services).filter((name) => services[name]?.profiles === undefined);
    expect(started.sort()).toEqual(['gateway', 'redis', 'worker']);

    const redis = (services.redis?.command ?? []).join(' ');
    expect(redis).toMatch(/--appendonly yes/);
    expect(redis).toMatch(/--maxmemory-policy noeviction/);
    // Redis is a trust boundary: a password, no host port, the pub/sub buffer limit spelled out.
    expect(redis).toContain(`--requirepass ${REDIS_PASSWORD}`);
    expect(redis).toContain('--client-output-buffer-limit pubsub 32mb 8mb 60');
    expect(services.redis?.ports).toBeUndefined();
    expect(services.redis?.healthcheck?.test.join(' ')).toContain('redis-cli ping');
    expect(services.redis?.environment?.REDISCLI_AUTH, 'the healthcheck authenticates').toBe(REDIS_PASSWORD);
    // A pinned release (or digest), not a moving major tag.
    expect(services.redis?.image).toMatch(/^redis:\d+\.\d+\.\d+(-[a-z0-9.]+)?(@sha256:[0-9a-f]{64})?$/);

    for (const name of ['gateway', 'worker']) {
      const s = services[name] as Service;
      expect(s.depends_on?.redis?.condition, name).toBe('service_healthy');
      expect(s.healthcheck?.test.join(' '), name).toMatch(/fetch\('http:\/\/127\.0\.0\.1:\d+\/(ready|health)'\)/);
      expect(s.environment?.REDIS_URL, name).toBe(`redis://:${REDIS_PASSWORD}@redis:6379`);
      expect(s.stop_grace_period, name).toBeDefined();
      // node itself, not npm: SIGTERM must reach the process that drains (through the image's tini).
      expect(s.command?.[0], name).toBe('node');
      expect(s.init, `${name}: the image brings its own init`).toBeUndefined();
    }
    // Liveness, not readiness: a gateway without a live worker is not broken (it answers 503).
    expect(services.gateway?.healthcheck?.test.join(' ')).toContain(':8000/health');
    expect(services.gateway?.healthcheck?.test.join(' ')).not.toContain('/ready');
    expect(services.worker?.healthcheck?.test.join(' ')).toContain(
      `:${services.worker?.environment?.WORKER_METRICS_PORT}/health`,
    );
    // Scalable workers: nothing that would clash between replicas.
    expect(services.worker?.ports).toBeUndefined();
    expect(services.worker?.container_name).toBeUndefined();
  });

  it.skipIf(compose === undefined)(
    'the cluster profile runs gateway and workers on a three-master Redis Cluster, next to the unchanged default',
    () => {
      const run = composeConfig({ REDIS_PASSWORD }, ['--profile', 'cluster']);
      expect(run.status, String(run.stderr)).toBe(0);
      const { services } = parse(String(run.stdout)) as { services: Record<string, Service> };
      const nodes = ['redis-cluster-1', 'redis-cluster-2', 'redis-cluster-3'];
      const cluster = [...nodes, 'redis-cluster-init', 'gateway-cluster', 'worker-cluster'];
      for (const name of cluster) {
        expect(services[name]?.profiles, name).toEqual(['cluster']);
      }
      // The default services are the ones the first test checks, in no profile.
      for (const name of ['redis', 'gateway', 'worker']) {
        expect(services[name]?.profiles, name).toBeUndefined();
      }
      expect(services.gateway?.environment?.REDIS_URL).toBe(`redis://:${REDIS_PASSWORD}@redis:6379`);
      expect(services.gateway?.environment?.AQUEDUCT_REDIS_CLUSTER).toBeUndefined();

      const standalone = (services.redis?.command ?? []).join(' ');
      const volumes = new Set<string>();
      for (const name of nodes) {
        const node = services[name] as Service;
        const command = (node.command ?? []).join(' ');
        // The standalone Redis's settings, every one of them, and the cluster's on top.
        expect(command.startsWith(standalone), `${name}: ${command}`).toBe(true);
        expect(command).toContain(`--masterauth ${REDIS_PASSWORD}`);
        expect(command).toContain('--cluster-enabled yes');
        expect(command).toContain(`--cluster-announce-hostname ${name}`);
        expect(command).toContain('--cluster-preferred-endpoint-type hostname');
        expect(node.image, name).toBe(services.redis?.image);
        expect(node.ports, `${name}: no host port`).toBeUndefined();
        expect(node.healthcheck?.test.join(' '), name).toContain('redis-cli ping');
        expect(node.environment?.REDISCLI_AUTH, name).toBe(REDIS_PASSWORD);
        // Short form (1.29: "name:/data:rw") or long form (the plugin: source and target).
        const data = (node.volumes ?? []).map((v) => {
          if (typeof v === 'string') {
            const [source, target] = v.split(':');
            return { source, target };
          }
          return v as { source?: string; target?: string };
        });
        expect(
          data.map((v) => v.target),
          name,
        ).toEqual(['/data']);
        volumes.add(String(data[0]?.source));
      }
      expect(volumes.size, 'a data volume per node, none shared with the standalone Redis').toBe(3);
      expect(volumes.has('redis-data')).toBe(false);

      // The one-shot init: after every node is up, with their names and the password; run once per `up`.
      const init = services['redis-cluster-init'] as Service;
      expect(init.image).toBe(services.redis?.image);
      expect(init.restart).toBe('no');
      expect(init.ports).toBeUndefined();
      expect(init.environment?.REDISCLI_AUTH).toBe(REDIS_PASSWORD);
      expect(init.environment?.REDIS_CLUSTER_NODES).toBe(nodes.map((n) => `${n}:6379`).join(' '));
      for (const name of nodes) {
        expect(init.depends_on?.[name]?.condition, name).toBe('service_healthy');
      }
      const script = readFileSync(join(ROOT, 'deploy/redis-cluster-init.sh'), 'utf8');
      expect(script).toContain('redis-cli --cluster create');
      expect(script).toContain('--cluster-yes');
      expect(script, 'skips the create once the nodes know each other').toMatch(/cluster_known_nodes/);

      const seeds = nodes.map((n) => `redis://:${REDIS_PASSWORD}@${n}:6379`).join(',');
      for (const name of ['gateway', 'worker']) {
        const base = services[name] as Service;
        const s = services[`${name}-cluster`] as Service;
        expect(s.environment?.AQUEDUCT_REDIS_CLUSTER, name).toBe('true');
        expect(s.environment?.REDIS_URL, name).toBe(seeds);
        // Starts once the cluster is whole; never waits for (so never starts) the standalone Redis.
        expect(s.depends_on, name).toEqual({ 'redis-cluster-init': { condition: 'service_completed_successfully' } });
        // Otherwise the same service: command, healthcheck, grace period, published ports.
        const { REDIS_URL: _u, AQUEDUCT_REDIS_CLUSTER: _c, ...env } = s.environment ?? {};
        const { REDIS_URL: _b, ...baseEnv } = base.environment ?? {};
        expect(env, name).toEqual(baseEnv);
        expect(s.command, name).toEqual(base.command);
        expect(s.healthcheck, name).toEqual(base.healthcheck);
        expect(s.stop_grace_period, name).toBe(base.stop_grace_period);
        expect(s.ports, name).toEqual(base.ports);
      }
      expect(services['worker-cluster']?.container_name).toBeUndefined();
    },
  );

  it.skipIf(compose === undefined)('docker-compose.yml refuses to start without REDIS_PASSWORD', () => {
    const run = composeConfig({});
    expect(run.status).not.toBe(0);
    expect(String(run.stderr)).toContain('set REDIS_PASSWORD');
  });

  it.skipIf(compose === undefined)(
    'publishes the gateway on loopback unless AQUEDUCT_PUBLIC_PORT says otherwise',
    () => {
      const portsOf = (env: Record<string, string>) => {
        const run = composeConfig({ REDIS_PASSWORD, ...env });
        expect(run.status, String(run.stderr)).toBe(0);
        const { services } = parse(String(run.stdout)) as { services: Record<string, Service> };
        return (services.gateway?.ports ?? []).map(published);
      };
      expect(portsOf({})).toEqual([{ host: '127.0.0.1', published: '8000', target: '8000' }]);
      expect(portsOf({ AQUEDUCT_PUBLIC_PORT: '8080' })).toEqual([{ host: '', published: '8080', target: '8000' }]);
      expect(portsOf({ AQUEDUCT_PUBLIC_PORT: '0.0.0.0:9000' })).toEqual([
        { host: '0.0.0.0', published: '9000', target: '8000' },
      ]);
    },
  );

  it.skipIf(compose === undefined)(
    'gives each role only its own secrets: the admin key to the gateway, upstream keys to the workers',
    () => {
      const adminKey = 'compose-admin-key-0123456789';
      const upstreamKey = 'sk-upstream-0123456789';
      // By default: the examples, which hold no secret, and nothing from the shell leaks in.
      const defaults = composeConfig({ REDIS_PASSWORD, AQUEDUCT_ADMIN_KEY: adminKey, VLLM_API_KEY: upstreamKey });
      expect(defaults.status, String(defaults.stderr)).toBe(0);
      expect(String(defaults.stdout)).not.toContain(adminKey);
      expect(String(defaults.stdout)).not.toContain(upstreamKey);

      const run = composeConfig({
        REDIS_PASSWORD,
        AQUEDUCT_GATEWAY_ENV_FILE: envFile({ AQUEDUCT_ADMIN_KEY: adminKey }),
        AQUEDUCT_WORKER_ENV_FILE: envFile({ VLLM_API_KEY: upstreamKey }),
        AQUEDUCT_TRUSTED_PROXIES: 'uniquelocal',
      });
      expect(run.status, String(run.stderr)).toBe(0);
      const { services } = parse(String(run.stdout)) as { services: Record<string, Service> };
      const gateway = services.gateway?.environment ?? {};
      const worker = services.worker?.environment ?? {};
      expect(gateway.AQUEDUCT_ADMIN_KEY).toBe(adminKey);
      expect(gateway.VLLM_API_KEY, 'the gateway never gets upstream keys').toBeUndefined();
      expect(worker.VLLM_API_KEY).toBe(upstreamKey);
      expect(worker.AQUEDUCT_ADMIN_KEY).toBeUndefined();
      expect(services.redis?.environment?.AQUEDUCT_ADMIN_KEY).toBeUndefined();
      expect(gateway.AQUEDUCT_TRUSTED_PROXIES).toBe('uniquelocal');
      expect(worker.AQUEDUCT_TRUSTED_PROXIES).toBeUndefined();
    },
  );

  it('the README documents the compose settings and spells the command one way', () => {
    const readme = readFileSync(join(ROOT, 'README.md'), 'utf8');
    const composeFile = readFileSync(join(ROOT, 'docker-compose.yml'), 'utf8');
    const settings = new Set([...composeFile.matchAll(/\$\{([A-Z_]+)/g)].map((m) => m[1] as string));
    expect(settings.size).toBeGreaterThan(5);
    for (const name of settings) {
      expect(readme, name).toContain(`\`${name}\``);
    }
    // `docker compose` (the plugin), never the old `docker-compose` command.
    expect(readme.match(/docker-compose(?!\.yml)/g) ?? []).toEqual([]);
    // The CLI: `npx aqueduct` in a checkout, `aqueduct` inside the image.
    expect(readme).toContain('npx aqueduct tokens create');
    expect(readme).toMatch(/docker compose exec gateway aqueduct tokens/);
    expect(readme).not.toMatch(/exec gateway (npx|npm)/);
    expect(composeFile).not.toMatch(/exec gateway (npx|npm)/);
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
    // The CLI is installed as a command, and its bin link is made by the workspace install.
    expect(runtime).toMatch(/^RUN ln -s \/app\/bin\/aqueduct\.js \/usr\/local\/bin\/aqueduct$/m);
    expect(dockerfile).toMatch(/^COPY bin\/package\.json \.\/bin\/$/m);
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
    // tini as PID 1, installed in the image, passing SIGTERM on to node.
    const entrypoint = /^ENTRYPOINT (\[.*\])$/m.exec(runtime)?.[1];
    expect(JSON.parse(entrypoint ?? 'null')).toEqual(['/usr/bin/tini', '-s', '--']);
    expect(runtime).toMatch(/apt-get install -y --no-install-recommends tini/);
    expect(runtime).toMatch(/NODE_OPTIONS="[^"]*--max-semi-space-size=\d+/);
    // --heap-growing-percent is not allowed in NODE_OPTIONS: a preload in the image sets it.
    expect(runtime).toMatch(/NODE_OPTIONS="[^"]*--require=\/app\/scripts\/heap-growing\.js/);
    expect(runtime).toMatch(/^COPY scripts\/heap-growing\.js \.\/scripts\/$/m);
    expect(readFileSync(join(ROOT, 'scripts/heap-growing.js'), 'utf8')).toMatch(
      /setFlagsFromString\('--heap-growing-percent=\d+'\)/,
    );
    const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8')) as {
      engines: { node: string };
      scripts: Record<string, string>;
    };
    expect(pkg.engines.node).toBe('>=24');
    for (const script of ['start:gateway', 'start:worker']) {
      expect(pkg.scripts[script], script).toMatch(/^node .*--max-semi-space-size=\d+ --heap-growing-percent=\d+ /);
    }
  });
});
