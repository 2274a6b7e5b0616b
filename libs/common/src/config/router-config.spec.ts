import { describe, expect, it } from 'vitest';
import { ConfigError, parseEnv } from './env';
import { buildRouterConfig } from './router-config';

const entry = (model_name: string, model: string, extra: Record<string, unknown> = {}, info?: object) => ({
  model_name,
  litellm_params: { model, ...extra },
  ...(info !== undefined && { model_info: info }),
});

describe('buildRouterConfig', () => {
  it('bounds max_tokens per model (4096 for simulator models) and unions extra_body_allowed', () => {
    const cfg = buildRouterConfig(
      {
        model_list: [
          entry(
            'v',
            'openai/m',
            { api_base: 'http://a/v1', extra_body_allowed: ['top_k'] },
            { max_output_tokens: 8192 },
          ),
          entry('v', 'openai/m', { api_base: 'http://b/v1', extra_body_allowed: ['guided_json'] }),
          entry('open', 'openai/m', { api_base: 'http://c/v1' }),
          entry('sim', 'simulator/lorem'),
        ],
      },
      {},
    );
    expect(cfg.resolve('v')?.maxOutputTokens).toBe(8192);
    expect([...(cfg.resolve('v')?.extraBodyAllowed ?? [])].sort()).toEqual(['guided_json', 'top_k']);
    expect(cfg.resolve('v')?.deployments[1]?.extraBodyAllowed).toEqual(['guided_json']);
    expect(cfg.resolve('open')?.maxOutputTokens).toBeUndefined();
    expect(cfg.resolve('sim')?.maxOutputTokens).toBe(4096);
    expect(() =>
      buildRouterConfig(
        {
          model_list: [
            entry('v', 'simulator/lorem', {}, { max_output_tokens: 10 }),
            entry('v', 'simulator/lorem', {}, { max_output_tokens: 20 }),
          ],
        },
        {},
      ),
    ).toThrow(/model_list\[1\] \(v\)\.model_info\.max_output_tokens: conflicts/);
    expect(() =>
      buildRouterConfig({ model_list: [entry('v', 'simulator/lorem', { extra_body_allowed: ['a b'] })] }, {}),
    ).toThrow(/extra_body_allowed/);
  });

  it('groups entries with one model_name into deployments of one model', () => {
    const cfg = buildRouterConfig(
      {
        model_list: [
          entry('qwen', 'openai/Qwen/Qwen2.5-7B', {
            api_base: 'http://a:8000/v1/',
            timeout: 120,
            max_parallel_requests: 4,
          }),
          entry('qwen', 'openai/Qwen/Qwen2.5-7B', { api_base: 'http://b:8000/v1' }),
          entry('sim', 'simulator/echo', { ttft_ms: 5, itl_ms: 2 }),
        ],
      },
      {},
    );
    const qwen = cfg.resolve('qwen');
    expect(cfg.models.map((m) => m.name)).toEqual(['qwen', 'sim']);
    expect(qwen?.deployments.map((d) => d.id)).toEqual(['qwen#0', 'qwen#1']);
    expect(qwen?.deployments[0]).toMatchObject({
      provider: 'openai',
      upstreamModel: 'Qwen/Qwen2.5-7B',
      apiBase: 'http://a:8000/v1',
      timeoutMs: 120_000,
      maxParallelRequests: 4,
    });
    expect(cfg.resolve('sim')?.deployments[0]).toMatchObject({ provider: 'simulator', ttftMs: 5, itlMs: 2 });
    expect(cfg.deployment('qwen#1')?.apiBase).toBe('http://b:8000/v1');
  });

  it('resolves os.environ/NAME api keys and names a missing variable', () => {
    const list = { model_list: [entry('m', 'openai/x', { api_base: 'http://u/v1', api_key: 'os.environ/UP_KEY' })] };
    expect(buildRouterConfig(list, { UP_KEY: 'secret' }).resolve('m')?.deployments[0]?.apiKey).toBe('secret');
    expect(() => buildRouterConfig(list, {})).toThrow(/model_list\[0\] \(m\).*UP_KEY is not set/);
  });

  it('keeps no api key when secrets are left unresolved (gateways), and still checks references', () => {
    const list = (key: string) => ({
      model_list: [entry('m', 'openai/x', { api_base: 'http://u/v1', api_key: key })],
    });
    expect(
      buildRouterConfig(list('os.environ/UP_KEY'), 'unresolved').resolve('m')?.deployments[0]?.apiKey,
    ).toBeUndefined();
    expect(buildRouterConfig(list('sk-literal'), 'unresolved').resolve('m')?.deployments[0]?.apiKey).toBeUndefined();
    expect(() => buildRouterConfig(list('os.environ/'), 'unresolved')).toThrow(/api_key: 'os.environ\/' is not/);
    const missing = (() => {
      try {
        buildRouterConfig(list('os.environ/UP_KEY'), {});
      } catch (err) {
        return err as ConfigError;
      }
      return undefined;
    })();
    expect(missing?.keys).toEqual(['UP_KEY']);
  });

  it('resolves aliases exactly (case-sensitive) and keeps the multiplier', () => {
    const cfg = buildRouterConfig(
      { model_list: [entry('big', 'simulator/x', {}, { aliases: ['main'], request_limit_multiplier: 2 })] },
      {},
    );
    expect(cfg.resolve('main')?.name).toBe('big');
    expect(cfg.resolve('Main')).toBeUndefined();
    expect(cfg.resolve('big')?.requestLimitMultiplier).toBe(2);
  });

  it.each([
    [
      'duplicate alias across models',
      [entry('a', 'simulator/x', {}, { aliases: ['z'] }), entry('b', 'simulator/x', {}, { aliases: ['z'] })],
      /duplicate alias 'z' is used by both 'a' and 'b'/,
    ],
    [
      'alias equal to a model name',
      [entry('a', 'simulator/x', {}, { aliases: ['b'] }), entry('b', 'simulator/x')],
      /alias 'b' of 'a' clashes/,
    ],
    [
      'unknown provider',
      [entry('a', 'anthropic/claude')],
      /model_list\[0\] \(a\): litellm_params.model: must be "openai/,
    ],
    ['openai without api_base', [entry('a', 'openai/x')], /model_list\[0\] \(a\).litellm_params.api_base: required/],
    ['negative timeout', [entry('a', 'simulator/x', { timeout: -1 })], /model_list\[0\] \(a\): litellm_params.timeout/],
    ['missing model_name', [{ litellm_params: { model: 'simulator/x' } }], /model_list\[0\]: model_name/],
    [
      'conflicting multipliers',
      [
        entry('a', 'simulator/x', {}, { request_limit_multiplier: 2 }),
        entry('a', 'simulator/y', {}, { request_limit_multiplier: 3 }),
      ],
      /model_list\[1\] \(a\).model_info.request_limit_multiplier: conflicts/,
    ],
  ])('refuses %s with a message naming the entry', (_name, list, message) => {
    expect(() => buildRouterConfig({ model_list: list }, {})).toThrow(message);
  });

  it('refuses an empty or missing model_list', () => {
    expect(() => buildRouterConfig({ model_list: [] }, {})).toThrow(ConfigError);
    expect(() => buildRouterConfig({}, {})).toThrow(/model_list/);
  });
});

describe('parseEnv', () => {
  it('applies the documented defaults', () => {
    const env = parseEnv({});
    expect(env).toMatchObject({
      PORT: 8000,
      HOST: '0.0.0.0',
      REDIS_URL: 'redis://127.0.0.1:6379',
      AQUEDUCT_REDIS_PREFIX: 'aqueduct',
      AQUEDUCT_REQUEST_TIMEOUT_MS: 60_000,
      WORKER_CONCURRENCY: 64,
      LOG_LEVEL: 'info',
    });
    expect(env.AQUEDUCT_ADMIN_KEY).toBeUndefined();
  });

  it('names every bad variable', () => {
    expect(() => parseEnv({ PORT: 'abc', WORKER_CONCURRENCY: '0', REDIS_URL: 'http://x' })).toThrow(
      /PORT[\s\S]*REDIS_URL[\s\S]*WORKER_CONCURRENCY/,
    );
    try {
      parseEnv({ PORT: 'abc', REDIS_URL: 'http://x' });
    } catch (err) {
      expect((err as ConfigError).keys).toEqual(['PORT', 'REDIS_URL']);
    }
  });
});
