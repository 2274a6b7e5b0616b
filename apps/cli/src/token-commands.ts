import { parseDurationSeconds } from '@app/common/config/duration';
import { TOKEN_PRIORITIES, tokenState, type TokenPriority, type TokenRecord } from '@app/common/tokens/token-record';
import type { TokenStore } from '@app/common/tokens/token-store';
import { type Command, InvalidArgumentError } from 'commander';

type Print = (line: string) => void;

function positiveInt(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) {
    throw new InvalidArgumentError('must be a non-negative integer');
  }
  return n;
}

function atLeastOne(value: string): number {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 1) {
    throw new InvalidArgumentError('must be a positive integer');
  }
  return n;
}

function priority(value: string): TokenPriority {
  const p = TOKEN_PRIORITIES.find((x) => x === value);
  if (p === undefined) {
    throw new InvalidArgumentError(`must be one of ${TOKEN_PRIORITIES.join(', ')}`);
  }
  return p;
}

function duration(value: string): number {
  try {
    return parseDurationSeconds(value);
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
}

function modelList(value: string): string[] {
  const models = value
    .split(',')
    .map((m) => m.trim())
    .filter(Boolean);
  if (models.length === 0) {
    throw new InvalidArgumentError('must name at least one model');
  }
  return models;
}

const iso = (s: number | null) => (s === null ? 'never' : new Date(s * 1000).toISOString());
const lim = (n: number | null) => (n === null ? '-' : String(n));

/** `aqueduct tokens create|list|revoke`. */
export function registerTokenCommands(program: Command, store: () => Promise<TokenStore>, print: Print): void {
  const tokens = program.command('tokens').description('create, list and revoke API tokens');

  tokens
    .command('create')
    .description('create a token; its key is shown once')
    .requiredOption('--name <name>', 'a label for the token')
    .option('--models <a,b>', 'allow-list of model names (default: all models)', modelList)
    .option('--rpm <n>', 'requests per minute', positiveInt)
    .option('--input-tpm <n>', 'input (prompt) tokens per minute', positiveInt)
    .option('--output-tpm <n>', 'output (completion) tokens per minute', positiveInt)
    .option(
      '--max-parallel <n>',
      'requests admitted at once, waiting or running (default: the gateway default)',
      atLeastOne,
    )
    .option('--priority <p>', 'scheduling priority: high, normal or low (default: normal)', priority)
    .option('--expires-in <duration>', 'lifetime, e.g. 12h, 30d (default: never expires)', duration)
    .option('--json', 'print one JSON object')
    .action(
      async (o: {
        name: string;
        models?: string[];
        rpm?: number;
        inputTpm?: number;
        outputTpm?: number;
        maxParallel?: number;
        priority?: TokenPriority;
        expiresIn?: number;
        json?: boolean;
      }) => {
        const { key, token } = await (
          await store()
        ).create({
          name: o.name,
          models: o.models,
          requests_per_minute: o.rpm,
          input_tokens_per_minute: o.inputTpm,
          output_tokens_per_minute: o.outputTpm,
          max_parallel_requests: o.maxParallel,
          priority: o.priority,
          expires_in: o.expiresIn,
        });
        if (o.json === true) {
          print(JSON.stringify({ ...token, key }));
          return;
        }
        print(`Created token ${token.id} (${token.name}).`);
        print(`Key (shown only now, store it safely): ${key}`);
      },
    );

  tokens
    .command('list')
    .description('list tokens (never shows keys)')
    .option('--json', 'print a JSON array')
    .action(async (o: { json?: boolean }) => {
      const all = await (await store()).list();
      const now = Date.now();
      if (o.json === true) {
        print(JSON.stringify(all.map((t) => ({ ...t, state: tokenState(t, now) }))));
        return;
      }
      print(formatTable(all, now));
    });

  tokens
    .command('revoke')
    .description('revoke a token by id; gateways refuse it within a second')
    .argument('<id>', 'token id (tok_...)')
    .action(async (id: string) => {
      if (!(await (await store()).revoke(id))) {
        program.error(`error: no token with id ${id}`, { exitCode: 1 });
      }
      print(`Revoked ${id}.`);
    });
}

function formatTable(tokens: TokenRecord[], now: number): string {
  const header = [
    'ID',
    'NAME',
    'KEY',
    'MODELS',
    'RPM',
    'IN TPM',
    'OUT TPM',
    'PARALLEL',
    'PRIORITY',
    'EXPIRES',
    'STATE',
  ];
  const rows = tokens.map((t) => [
    t.id,
    t.name,
    t.preview,
    t.models === null ? '*' : t.models.join(','),
    lim(t.requests_per_minute),
    lim(t.input_tokens_per_minute),
    lim(t.output_tokens_per_minute),
    lim(t.max_parallel_requests),
    t.priority,
    iso(t.expires_at),
    tokenState(t, now),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  return [header, ...rows]
    .map((r) =>
      r
        .map((c, i) => c.padEnd(widths[i] ?? 0))
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}
