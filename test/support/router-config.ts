import { stringify } from 'yaml';
import { FAKE_UPSTREAM_KNOBS } from './fake-upstream';
import { writeRouterConfig } from './stack';

/**
 * Router configs built from typed `model_list` entries instead of YAML text pasted into
 * every suite; the file written is what the gateway and workers load.
 */

/** One `model_list` entry. */
export interface Deployment {
  model_name: string;
  litellm_params: Record<string, string | number | string[]>;
  model_info?: {
    aliases?: string[];
    request_limit_multiplier?: number;
    max_output_tokens?: number;
    mode?: 'completion' | 'chat' | 'embedding';
  };
}

/**
 * The non-OpenAI body fields a test deployment on the fake upstream lets through: its
 * behaviour knobs, the `probe` mark suites use to find their request among the upstream's,
 * and the vLLM extensions the contract suites send (`top_k`, `repetition_penalty`,
 * `guided_json`). Anything else a client sends is dropped by the worker.
 */
export const TEST_UPSTREAM_EXTRA_BODY: string[] = [
  ...FAKE_UPSTREAM_KNOBS,
  'probe',
  'top_k',
  'repetition_penalty',
  'guided_json',
];

/**
 * A deployment on an OpenAI-compatible upstream: model `openai/fake-model` and
 * `extra_body_allowed: TEST_UPSTREAM_EXTRA_BODY` unless `params` overrides them.
 */
export function upstreamDeployment(
  name: string,
  apiBase: string,
  params: Record<string, string | number | string[]> = {},
): Deployment {
  return {
    model_name: name,
    litellm_params: {
      model: 'openai/fake-model',
      api_base: apiBase,
      extra_body_allowed: TEST_UPSTREAM_EXTRA_BODY,
      ...params,
    },
  };
}

/** A deployment on the built-in simulator (`echo` repeats the prompt, `lorem` makes text up). */
export function simulatorDeployment(
  name: string,
  simulator: 'echo' | 'lorem',
  params: Record<string, string | number | string[]> = {},
  info?: Deployment['model_info'],
): Deployment {
  const entry: Deployment = { model_name: name, litellm_params: { model: `simulator/${simulator}`, ...params } };
  if (info !== undefined) {
    entry.model_info = info;
  }
  return entry;
}

/** Writes a router config listing `deployments` in order; returns its path (for `StackOptions.routerConfig`). */
export function writeModelList(...deployments: Deployment[]): string {
  return writeRouterConfig(stringify({ model_list: deployments }));
}
