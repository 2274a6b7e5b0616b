import { parseDurationSeconds } from '@app/common/config/duration';
import type { UsageTotals } from '@app/common/usage/usage-record';
import type { UsageStore } from '@app/common/usage/usage-store';
import { type Command, InvalidArgumentError } from 'commander';

type Print = (line: string) => void;

function since(value: string): number {
  try {
    return parseDurationSeconds(value);
  } catch (err) {
    throw new InvalidArgumentError((err as Error).message);
  }
}

const row = (label: string, t: UsageTotals) => [
  label,
  String(t.requests),
  String(t.prompt_tokens),
  String(t.completion_tokens),
  String(t.errors),
];

function table(rows: string[][]): string {
  const widths = rows[0]?.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length))) ?? [];
  return rows
    .map((r) => r.map((c, i) => (i === 0 ? c.padEnd(widths[i] ?? 0) : c.padStart(widths[i] ?? 0))).join('  '))
    .join('\n');
}

/** `aqueduct usage`: requests, tokens and errors over a time window, per model and per token. */
export function registerUsageCommand(program: Command, store: () => Promise<UsageStore>, print: Print): void {
  program
    .command('usage')
    .description('usage over a time window: requests, tokens and errors')
    .option('--token <id>', 'only this token')
    .option('--model <name>', 'only this model')
    .option('--since <duration>', 'how far back, e.g. 15m, 1h, 7d', since, 3_600)
    .option('--json', 'print one JSON object')
    .action(async (o: { token?: string; model?: string; since: number; json?: boolean }) => {
      const summary = await (
        await store()
      ).summarize({ since: Date.now() - o.since * 1000, tokenId: o.token, model: o.model });
      if (o.json === true) {
        print(JSON.stringify(summary));
        return;
      }
      const header = ['', 'REQUESTS', 'PROMPT TOKENS', 'COMPLETION TOKENS', 'ERRORS'];
      print(`Usage since ${new Date(summary.since).toISOString()}`);
      print(
        table([
          header,
          row('total', summary),
          ...summary.by_model.map((m) => row(`model ${m.model || '(none)'}`, m)),
          ...summary.by_token.map((t) => row(`token ${t.token_id}`, t)),
        ]),
      );
      if (summary.refused.length > 0) {
        print('');
        print('Refused before admission (all time, no usage records):');
        print(
          table([
            ['TOKEN', 'MODEL', 'STATUS', 'COUNT'],
            ...summary.refused.map((r) => [
              r.token_id ?? '(none)',
              r.model ?? '(none)',
              String(r.status),
              String(r.count),
            ]),
          ]),
        );
      }
    });
}
