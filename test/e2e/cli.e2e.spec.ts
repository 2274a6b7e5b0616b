import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import Redis from 'ioredis';
import { afterAll, describe, expect, it } from 'vitest';
import { deleteByPrefix, REDIS_URL, ROOT, uniquePrefix } from '../support/stack';

const run = promisify(execFile);
const prefix = uniquePrefix('cli');

function aqueduct(...args: string[]) {
  return run(process.execPath, [join(ROOT, 'bin/aqueduct.js'), ...args], {
    env: { PATH: process.env.PATH ?? '', REDIS_URL, AQUEDUCT_REDIS_PREFIX: prefix },
  });
}

describe('aqueduct CLI', () => {
  const redis = new Redis(REDIS_URL);

  afterAll(async () => {
    await deleteByPrefix(redis, prefix);
    await redis.quit();
  });

  it('creates a token with every contract option and prints its key once', async () => {
    const { stdout } = await aqueduct(
      'tokens',
      'create',
      '--name',
      'ci',
      '--models',
      'sim,echo',
      '--rpm',
      '5',
      '--input-tpm',
      '1000',
      '--output-tpm',
      '2000',
      '--max-parallel',
      '7',
      '--priority',
      'high',
      '--expires-in',
      '30d',
      '--json',
    );
    const created = JSON.parse(stdout) as Record<string, unknown>;
    expect(created.key).toMatch(/^sk-aq-[A-Za-z0-9_-]{43}$/);
    expect(created).toMatchObject({
      name: 'ci',
      models: ['sim', 'echo'],
      requests_per_minute: 5,
      input_tokens_per_minute: 1000,
      output_tokens_per_minute: 2000,
      max_parallel_requests: 7,
      priority: 'high',
      revoked: false,
    });
    const ttl = (created.expires_at as number) - (created.created_at as number);
    expect(ttl).toBe(30 * 86_400);
    expect(created.preview).toBe(`sk-aq-...${(created.key as string).slice(-4)}`);

    // Only the hash and preview are stored: the plaintext appears nowhere in Redis.
    const dump = JSON.stringify(await redis.hgetall(`${prefix}:tokens:by-hash`));
    expect(dump).not.toContain(created.key as string);
    expect(dump).toContain(created.preview as string);
  });

  it('lists tokens without keys and revokes by id', async () => {
    const { stdout } = await aqueduct('tokens', 'create', '--name', 'to-revoke', '--json');
    const { id, key } = JSON.parse(stdout) as { id: string; key: string };
    const table = (await aqueduct('tokens', 'list')).stdout;
    expect(table).toMatch(/ID\s+NAME\s+KEY\s+MODELS\s+RPM\s+IN TPM\s+OUT TPM\s+PARALLEL\s+PRIORITY/);
    // Defaults: the gateway's max_parallel, normal priority.
    expect(table).toMatch(new RegExp(`${id}\\s+to-revoke\\s+\\S+\\s+\\*\\s+-\\s+-\\s+-\\s+-\\s+normal`));
    expect(table).toContain(id);
    expect(table).not.toContain(key);

    expect((await aqueduct('tokens', 'revoke', id)).stdout).toContain(`Revoked ${id}`);
    const listed = JSON.parse((await aqueduct('tokens', 'list', '--json')).stdout) as { id: string; state: string }[];
    expect(listed.find((t) => t.id === id)?.state).toBe('revoked');
  });

  it('fails clearly on bad input', async () => {
    await expect(aqueduct('tokens', 'revoke', 'tok_missing')).rejects.toMatchObject({
      code: 1,
      stderr: expect.stringContaining('no token with id tok_missing') as unknown,
    });
    await expect(aqueduct('tokens', 'create', '--name', 'x', '--rpm', 'lots')).rejects.toMatchObject({
      stderr: expect.stringContaining('--rpm') as unknown,
    });
    await expect(aqueduct('tokens', 'create', '--name', 'x', '--expires-in', 'soon')).rejects.toMatchObject({
      stderr: expect.stringContaining('invalid duration') as unknown,
    });
    await expect(aqueduct('tokens', 'create', '--name', 'x', '--max-parallel', '0')).rejects.toMatchObject({
      stderr: expect.stringContaining('--max-parallel') as unknown,
    });
    await expect(aqueduct('tokens', 'create', '--name', 'x', '--priority', 'urgent')).rejects.toMatchObject({
      stderr: expect.stringContaining('high, normal, low') as unknown,
    });
  });
});
