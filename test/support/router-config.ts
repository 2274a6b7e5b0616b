import { stringify } from 'yaml';
import { writeRouterConfig } from './stack';

/**
 * Router configs built from typed `model_list` entries instead of YAML text pasted into
 * every suite; the file written is what the gateway and workers load.
 */

/** One `model_list` entry. */
export interface Deployment {
  model_name: string;
  litellm_params: Record<string, string | number>;
  model_info?: { aliases?: string[]; request_limit_multiplier?: number };
}

/** A deployment on an OpenAI-compatible upstream: model `openai/fake-model` unless `params` overrides it. */
export function upstreamDeployment(
  name: string,
  apiBase: string,
  params: Record<string, string | number> = {},
): Deployment {
  return { model_name: name, litellm_params: { model: 'openai/fake-model', api_base: apiBase, ...params } };
}

/** A deployment on the built-in simulator (`echo` repeats the prompt, `lorem` makes text up). */
export function simulatorDeployment(
  name: string,
  simulator: 'echo' | 'lorem',
  params: Record<string, string | number> = {},
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
