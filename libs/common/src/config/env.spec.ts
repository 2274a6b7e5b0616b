import { describe, expect, it } from 'vitest';
import { ConfigError, parseEnv } from './env';
import { parseRedisSeeds } from '../redis/redis-url';

describe('AQUEDUCT_REDIS_CLUSTER', () => {
  it('defaults to one Redis, and takes the usual boolean spellings', () => {
    expect(parseEnv({}).AQUEDUCT_REDIS_CLUSTER).toBe(false);
    expect(parseEnv({ AQUEDUCT_REDIS_CLUSTER: 'yes', REDIS_URL: 'redis://a:7000' }).AQUEDUCT_REDIS_CLUSTER).toBe(true);
    expect(() => parseEnv({ AQUEDUCT_REDIS_CLUSTER: 'cluster' })).toThrow(/AQUEDUCT_REDIS_CLUSTER/);
  });

  it('takes a comma-separated seed list, with password and TLS as for one Redis', () => {
    const env = parseEnv({
      AQUEDUCT_REDIS_CLUSTER: 'true',
      REDIS_URL: 'rediss://u:p%40ss@10.0.0.1:7000, rediss://u:p%40ss@10.0.0.2:7001',
    });
    expect(parseRedisSeeds(env.REDIS_URL)).toEqual([
      { host: '10.0.0.1', port: 7000, username: 'u', password: 'p@ss', tls: {} },
      { host: '10.0.0.2', port: 7001, username: 'u', password: 'p@ss', tls: {} },
    ]);
  });

  it.each([
    ['redis://a:7000,', /seed 2 must be a redis:\/\/ or rediss:\/\/ URL/],
    ['redis://a:7000,http://b:7000', /seed 2 must be a redis:\/\//],
    ['redis://a:7000,rediss://b:7000', /same scheme/],
    ['redis://:x@a:7000,redis://:y@b:7000', /same scheme .* user and password/],
    ['redis://a:7000/2', /no database number/],
    ['redis://a:99999', /seed 1/],
  ])('refuses the seed list %s at boot, naming REDIS_URL without its secrets', (url, message) => {
    let error: unknown;
    try {
      parseEnv({ AQUEDUCT_REDIS_CLUSTER: 'true', REDIS_URL: url });
    } catch (err) {
      error = err;
    }
    expect(error).toBeInstanceOf(ConfigError);
    expect((error as ConfigError).keys).toEqual(['REDIS_URL']);
    expect((error as ConfigError).message).toMatch(message);
    expect((error as ConfigError).message).not.toMatch(/:x@|:y@/);
  });

  it('refuses a seed list without AQUEDUCT_REDIS_CLUSTER, saying which flag is missing', () => {
    expect(() => parseEnv({ REDIS_URL: 'redis://a:7000,redis://b:7000' })).toThrow(
      /REDIS_URL: lists several nodes; set AQUEDUCT_REDIS_CLUSTER=true/,
    );
  });
});
