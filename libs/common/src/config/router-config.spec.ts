import { describe, expect, it } from 'vitest';
import { buildRouterConfig } from './router-config';

describe('buildRouterConfig smoke', () => {
  it('parses a simulator model', () => {
    const cfg = buildRouterConfig({ model_list: [{ model_name: 'sim', litellm_params: { model: 'simulator/echo' } }] }, {});
    expect(cfg.resolve('sim')?.deployments[0]?.provider).toBe('simulator');
  });
});
