import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { parseEnv } from '../config/env';
import { AdminCredentials, presentedSecret } from './admin-credentials';
import { AppLogger, createLogger, requestContext } from './logger';

function capture(level: 'trace' | 'info' = 'trace') {
  const lines: Record<string, unknown>[] = [];
  const destination = new Writable({
    write(chunk: Buffer, _enc, done) {
      for (const line of chunk.toString().split('\n').filter(Boolean)) {
        lines.push(JSON.parse(line) as Record<string, unknown>);
      }
      done();
    },
  });
  return { lines, logger: new AppLogger(createLogger({ app: 'test', level, destination })) };
}

describe('AppLogger', () => {
  it('writes Nest log calls as JSON lines with level names and the context', () => {
    const { lines, logger } = capture();
    logger.log('hello', 'Ctx');
    logger.warn({ msg: 'job finished', rid: 'r1', status: 200 }, 'Jobs');
    logger.error('boom', 'Error: boom\n    at somewhere (x.ts:1:1)', 'Errors');
    logger.error('no stack', undefined, 'Errors');
    logger.verbose('fine detail', 'Ctx');
    expect(lines[0]).toMatchObject({ level: 'info', app: 'test', context: 'Ctx', msg: 'hello' });
    expect(lines[1]).toMatchObject({ level: 'warn', context: 'Jobs', msg: 'job finished', rid: 'r1', status: 200 });
    expect(lines[2]).toMatchObject({ level: 'error', context: 'Errors', msg: 'boom' });
    expect(lines[2]?.stack).toMatch(/at somewhere/);
    expect(lines[3]).toMatchObject({ level: 'error', context: 'Errors', msg: 'no stack' });
    expect(lines[4]).toMatchObject({ level: 'trace', msg: 'fine detail' });
    expect(typeof lines[0]?.time).toBe('string');
  });

  it('honours the level', () => {
    const { lines, logger } = capture('info');
    logger.debug('hidden', 'Ctx');
    logger.verbose('hidden', 'Ctx');
    logger.log('shown', 'Ctx');
    expect(lines.map((l) => l.msg)).toEqual(['shown']);
  });

  it('adds the request id of the request being served', () => {
    const { lines, logger } = capture();
    requestContext.run({ rid: 'abc123' }, () => logger.warn('enqueue failed', 'Queue'));
    logger.warn('outside', 'Queue');
    expect(lines[0]).toMatchObject({ rid: 'abc123', msg: 'enqueue failed' });
    expect(lines[1]).not.toHaveProperty('rid');
  });

  it('never writes credentials or request content passed as fields', () => {
    const { lines, logger } = capture();
    logger.log({
      msg: 'careless',
      authorization: 'Bearer sk-aq-secret',
      headers: { authorization: 'Bearer sk-aq-secret2' },
      api_key: 'upstream-secret',
      prompt: 'the prompt',
      job: { params: { prompt: 'nested prompt' }, prompt: 'x' },
      choices: [{ text: 'completion' }],
    });
    const text = JSON.stringify(lines);
    for (const secret of ['sk-aq-secret', 'upstream-secret', 'the prompt', 'nested prompt', 'completion']) {
      expect(text).not.toContain(secret);
    }
  });
});

describe('AdminCredentials', () => {
  const admin = 'admin-key-0123456789';
  const creds = new AdminCredentials(admin);
  const basic = (user: string, password: string) => `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;

  it('accepts the admin key as a Bearer token or as the Basic password, with any user name', () => {
    expect(creds.check(`Bearer ${admin}`)).toBe('admin');
    expect(creds.check(basic('admin', admin))).toBe('admin');
    expect(creds.check(basic('', admin))).toBe('admin');
  });

  it('tells an API token, a wrong key and no key apart', () => {
    const token = `sk-aq-${'A'.repeat(43)}`;
    expect(creds.check(`Bearer ${token}`)).toBe('api_token');
    expect(creds.check(basic('x', token))).toBe('api_token');
    expect(creds.check('Bearer nope')).toBe('wrong');
    expect(creds.check(basic('x', ''))).toBe('missing');
    expect(creds.check(undefined)).toBe('missing');
    expect(creds.check('Digest abc')).toBe('missing');
  });

  it('accepts nothing when no admin key is configured', () => {
    const none = new AdminCredentials(undefined);
    expect(none.configured).toBe(false);
    expect(none.check(`Bearer ${admin}`)).toBe('wrong');
  });

  it('reads the password part of Basic credentials (which may contain colons)', () => {
    expect(presentedSecret(basic('u', 'a:b:c'))).toBe('a:b:c');
  });
});

describe('observability environment', () => {
  it('defaults the worker metrics port and leaves /metrics open', () => {
    const env = parseEnv({});
    expect(env).toMatchObject({
      WORKER_METRICS_PORT: 9464,
      WORKER_METRICS_HOST: '0.0.0.0',
      AQUEDUCT_METRICS_REQUIRE_ADMIN: false,
    });
  });

  it('reads boolean flags strictly and needs an admin key for protected metrics', () => {
    const key = { AQUEDUCT_ADMIN_KEY: 'k'.repeat(16) };
    expect(parseEnv({ ...key, AQUEDUCT_METRICS_REQUIRE_ADMIN: 'TRUE' }).AQUEDUCT_METRICS_REQUIRE_ADMIN).toBe(true);
    expect(parseEnv({ ...key, AQUEDUCT_METRICS_REQUIRE_ADMIN: 'false' }).AQUEDUCT_METRICS_REQUIRE_ADMIN).toBe(false);
    expect(() => parseEnv({ AQUEDUCT_METRICS_REQUIRE_ADMIN: 'maybe' })).toThrow(/AQUEDUCT_METRICS_REQUIRE_ADMIN/);
    expect(() => parseEnv({ AQUEDUCT_METRICS_REQUIRE_ADMIN: '1' })).toThrow(/AQUEDUCT_ADMIN_KEY/);
    expect(() => parseEnv({ WORKER_METRICS_PORT: '70000' })).toThrow(/WORKER_METRICS_PORT/);
  });
});
