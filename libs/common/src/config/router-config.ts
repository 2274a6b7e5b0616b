import { readFileSync } from 'node:fs';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import type { OperationName } from '../contracts/openai';
import { ConfigError } from './env';

/**
 * The router config uses the LiteLLM / Aqueduct `model_list` format so that existing
 * configs carry over. It is validated once at boot; every message names the entry.
 */
const secret = z.string().min(1);
const litellmParamsSchema = z
  .object({
    model: z.string().regex(/^(openai|simulator)\/.+$/, 'must be "openai/<upstream model>" or "simulator/<name>"'),
    api_base: z.url({ protocol: /^https?$/ }).optional(),
    api_key: secret.optional(),
    timeout: z.number().positive().optional(),
    max_parallel_requests: z.number().int().positive().optional(),
    ttft_ms: z.number().min(0).optional(),
    itl_ms: z.number().min(0).optional(),
    /**
     * Request fields beyond the OpenAI parameters that may reach this upstream (vLLM's
     * `top_k`, `guided_json`, ...). Everything else a client sends is dropped, so a token
     * holder cannot reach an upstream's private extension surface.
     */
    extra_body_allowed: z.array(z.string().regex(/^[A-Za-z0-9_.-]+$/, 'must be a field name')).optional(),
  })
  .loose();

const modelInfoSchema = z
  .object({
    aliases: z.array(z.string().min(1)).optional(),
    request_limit_multiplier: z.number().positive().optional(),
    /** Largest `max_tokens` a request may ask for (default 4096 for simulator models). */
    max_output_tokens: z.number().int().positive().optional(),
    /** Which operations the model serves, as in LiteLLM; unset = completions and chat. */
    mode: z.enum(['completion', 'chat', 'embedding']).optional(),
  })
  .loose();

const entrySchema = z.object({
  model_name: z.string().min(1).regex(/^\S+$/, 'must not contain whitespace'),
  litellm_params: litellmParamsSchema,
  model_info: modelInfoSchema.optional(),
});

const fileSchema = z.object({ model_list: z.array(z.unknown()).min(1, 'must list at least one model') }).loose();

export type Provider = 'openai' | 'simulator';

/** One upstream (or simulator) serving a model; a model has one or more. */
export interface Deployment {
  /** Stable id for logs and metrics: `<model_name>#<index among its deployments>`. */
  readonly id: string;
  readonly modelName: string;
  readonly provider: Provider;
  /** What the upstream is asked for (the part after the provider prefix). */
  readonly upstreamModel: string;
  readonly apiBase?: string;
  readonly apiKey?: string;
  readonly timeoutMs?: number;
  readonly maxParallelRequests?: number;
  readonly ttftMs: number;
  readonly itlMs: number;
  /** Non-OpenAI request fields this deployment's upstream may receive. */
  readonly extraBodyAllowed: readonly string[];
}

export interface ModelEntry {
  readonly name: string;
  readonly aliases: readonly string[];
  readonly requestLimitMultiplier: number;
  /** Upper bound on `max_tokens`; undefined = no bound of the gateway's own. */
  readonly maxOutputTokens?: number;
  /** Union of the deployments' `extra_body_allowed`: what the gateway lets into a job. */
  readonly extraBodyAllowed: ReadonlySet<string>;
  /** `model_info.mode`, or undefined for a model that serves completions and chat. */
  readonly mode?: OperationName;
  readonly deployments: readonly Deployment[];
}

/** Whether a model serves an operation: its `mode` alone, or completions and chat without one. */
export function modelServes(model: ModelEntry, op: OperationName): boolean {
  return model.mode === undefined ? op !== 'embedding' : model.mode === op;
}

/** Simulator models without `max_output_tokens` get this bound. */
export const SIMULATOR_MAX_OUTPUT_TOKENS = 4096;

export class RouterConfig {
  /** Stable `created` for the models API: config load time is not stable across restarts. */
  static readonly CREATED = 1_735_689_600; // 2025-01-01T00:00:00Z

  private readonly byName = new Map<string, ModelEntry>();

  constructor(readonly models: readonly ModelEntry[]) {
    for (const m of models) {
      this.byName.set(m.name, m);
      for (const a of m.aliases) {
        this.byName.set(a, m);
      }
    }
  }

  /** Resolves a public model name or alias (exact, case-sensitive). */
  resolve(nameOrAlias: string): ModelEntry | undefined {
    return this.byName.get(nameOrAlias);
  }

  deployment(id: string): Deployment | undefined {
    const [name] = id.split('#');
    return this.byName.get(name ?? '')?.deployments.find((d) => d.id === id);
  }
}

function describe(issues: z.core.$ZodIssue[]): string {
  return issues.map((i) => `${i.path.length > 0 ? i.path.join('.') : '(entry)'}: ${i.message}`).join('; ');
}

/**
 * How `os.environ/NAME` references are treated. Workers resolve them (`env`); a gateway
 * never calls an upstream, so it only checks their syntax and keeps no value: an upstream
 * secret never has to be given to the internet-facing process.
 */
export type SecretSource = Record<string, string | undefined> | 'unresolved';

const ENV_REFERENCE = /^os\.environ\/([A-Za-z_][A-Za-z0-9_]*)$/;

function resolveSecret(value: string | undefined, where: string, env: SecretSource): string | undefined {
  if (value === undefined || !value.startsWith('os.environ/')) {
    return env === 'unresolved' ? undefined : value;
  }
  const name = ENV_REFERENCE.exec(value)?.[1];
  if (name === undefined) {
    throw new ConfigError(`${where}.litellm_params.api_key: '${value}' is not os.environ/<VARIABLE_NAME>`);
  }
  if (env === 'unresolved') {
    return undefined;
  }
  const resolved = env[name];
  if (resolved === undefined || resolved === '') {
    throw new ConfigError(`${where}.litellm_params.api_key: environment variable ${name} is not set`, [name]);
  }
  return resolved;
}

/**
 * Validates parsed YAML; `env` resolves `os.environ/NAME` references ('unresolved': the
 * deployments carry no api key at all, see {@link SecretSource}).
 */
export function buildRouterConfig(raw: unknown, env: SecretSource, source = 'router config') {
  const file = fileSchema.safeParse(raw);
  if (!file.success) {
    throw new ConfigError(`${source}: ${describe(file.error.issues)}`);
  }
  const grouped = new Map<
    string,
    {
      aliases: string[];
      multiplier?: number;
      maxOutputTokens?: number;
      mode?: OperationName;
      deployments: Deployment[];
    }
  >();
  const aliasOwner = new Map<string, string>();

  file.data.model_list.forEach((item, index) => {
    const parsed = entrySchema.safeParse(item);
    const label =
      typeof item === 'object' && item !== null && typeof (item as { model_name?: unknown }).model_name === 'string'
        ? `model_list[${index}] (${(item as { model_name: string }).model_name})`
        : `model_list[${index}]`;
    if (!parsed.success) {
      throw new ConfigError(`${source}: ${label}: ${describe(parsed.error.issues)}`);
    }
    const e = parsed.data;
    const [provider, ...rest] = e.litellm_params.model.split('/');
    if (provider === 'openai' && e.litellm_params.api_base === undefined) {
      throw new ConfigError(`${source}: ${label}.litellm_params.api_base: required for openai/ deployments`);
    }
    const group = grouped.get(e.model_name) ?? { aliases: [], deployments: [] };
    grouped.set(e.model_name, group);

    // Model-wide values: every deployment that sets one must agree with the others.
    const modelWide = <T>(key: 'request_limit_multiplier' | 'max_output_tokens' | 'mode', current: T | undefined) => {
      const value = e.model_info?.[key] as T | undefined;
      if (value !== undefined && current !== undefined && current !== value) {
        throw new ConfigError(
          `${source}: ${label}.model_info.${key}: conflicts with another deployment of ${e.model_name}`,
        );
      }
      return value ?? current;
    };
    group.multiplier = modelWide('request_limit_multiplier', group.multiplier);
    group.maxOutputTokens = modelWide('max_output_tokens', group.maxOutputTokens);
    group.mode = modelWide('mode', group.mode);
    for (const alias of e.model_info?.aliases ?? []) {
      const owner = aliasOwner.get(alias);
      if (owner !== undefined && owner !== e.model_name) {
        throw new ConfigError(
          `${source}: ${label}.model_info.aliases: duplicate alias '${alias}' is used by both '${owner}' and '${e.model_name}'`,
        );
      }
      aliasOwner.set(alias, e.model_name);
      if (!group.aliases.includes(alias)) {
        group.aliases.push(alias);
      }
    }
    const p = e.litellm_params;
    group.deployments.push({
      id: `${e.model_name}#${group.deployments.length}`,
      modelName: e.model_name,
      provider: provider as Provider,
      upstreamModel: rest.join('/'),
      apiBase: p.api_base?.replace(/\/+$/, ''),
      apiKey: resolveSecret(p.api_key, label, env),
      timeoutMs: p.timeout === undefined ? undefined : Math.round(p.timeout * 1000),
      maxParallelRequests: p.max_parallel_requests,
      ttftMs: p.ttft_ms ?? 0,
      itlMs: p.itl_ms ?? 0,
      extraBodyAllowed: p.extra_body_allowed ?? [],
    });
  });

  for (const [alias, owner] of aliasOwner) {
    if (grouped.has(alias)) {
      throw new ConfigError(`${source}: alias '${alias}' of '${owner}' clashes with the model of the same name`);
    }
  }
  return new RouterConfig(
    [...grouped].map(([name, g]) => ({
      name,
      aliases: g.aliases,
      requestLimitMultiplier: g.multiplier ?? 1,
      maxOutputTokens:
        g.maxOutputTokens ??
        (g.deployments.every((d) => d.provider === 'simulator') ? SIMULATOR_MAX_OUTPUT_TOKENS : undefined),
      extraBodyAllowed: new Set(g.deployments.flatMap((d) => d.extraBodyAllowed)),
      mode: g.mode,
      deployments: g.deployments,
    })),
  );
}

export function loadRouterConfig(path: string, env: SecretSource): RouterConfig {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new ConfigError(`AQUEDUCT_CONFIG: cannot read ${path}: ${(err as Error).message}`, ['AQUEDUCT_CONFIG']);
  }
  let raw: unknown;
  try {
    raw = parseYaml(text);
  } catch (err) {
    throw new ConfigError(`AQUEDUCT_CONFIG: ${path}: invalid YAML: ${(err as Error).message}`, ['AQUEDUCT_CONFIG']);
  }
  try {
    return buildRouterConfig(raw, env, path);
  } catch (err) {
    // A bad entry is a fault of the file AQUEDUCT_CONFIG names (and of a variable, when one is missing).
    if (err instanceof ConfigError) {
      throw new ConfigError(`AQUEDUCT_CONFIG: ${err.message}`, [...err.keys, 'AQUEDUCT_CONFIG']);
    }
    throw err;
  }
}
