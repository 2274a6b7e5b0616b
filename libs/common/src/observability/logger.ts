import { AsyncLocalStorage } from 'node:async_hooks';
import type { LoggerService } from '@nestjs/common';
import { pino, type DestinationStream, type Level, type LevelWithSilent, type Logger } from 'pino';

/** What every log line written while serving one HTTP request carries. */
export interface RequestContext {
  rid: string;
}

/**
 * Set by the gateway's request middleware around the rest of the request, so that any
 * `new Logger(...)` line written on a request's behalf carries its `rid` without passing it.
 */
export const requestContext = new AsyncLocalStorage<RequestContext>();

/**
 * Field paths that are never written, whatever a caller passes: credentials, and request or
 * response content (prompts, completions). Log lines carry ids and numbers, never payloads.
 */
export const REDACTED_PATHS = [
  'authorization',
  'headers.authorization',
  'headers.cookie',
  '*.authorization',
  '*.headers.authorization',
  '*.headers.cookie',
  'key',
  '*.key',
  'api_key',
  '*.api_key',
  'apiKey',
  '*.apiKey',
  'password',
  '*.password',
  'prompt',
  '*.prompt',
  'params',
  '*.params',
  'choices',
  '*.choices',
  'body',
  '*.body',
];

/**
 * Values that must never reach a log line, whichever field or message carries them: the
 * Redis password of REDIS_URL, above all. Redis itself can echo a password back (an AUTH
 * error names it) and a driver may put a URL with credentials into an error message, so
 * field redaction alone is not enough: every finished line is scrubbed before it is written.
 */
const secrets = new Set<string>();

/** Scrubs `values` (when at least 4 characters long) from every log line this process writes. */
export function redactFromLogs(...values: (string | undefined)[]): void {
  for (const v of values) {
    if (v !== undefined && v.length >= 4) {
      secrets.add(v);
      // The line is JSON: a value with quotes or backslashes appears escaped in it.
      secrets.add(JSON.stringify(v).slice(1, -1));
    }
  }
}

/** `user:password@` in any URL, whatever the scheme. */
const URL_CREDENTIALS = /\b([a-z][a-z0-9+.-]*:\/\/)[^\s/@"]*@/gi;

/** `text` without URL credentials and without any value given to {@link redactFromLogs}. */
export function scrubSecrets(text: string): string {
  let out = text.includes('://') ? text.replace(URL_CREDENTIALS, '$1[redacted]@') : text;
  for (const s of secrets) {
    if (out.includes(s)) {
      out = out.split(s).join('[redacted]');
    }
  }
  return out;
}

/** Passes each finished line through {@link scrubSecrets} (cheap: one substring search per secret). */
function scrubbing(destination: DestinationStream): DestinationStream {
  return { write: (line: string) => destination.write(scrubSecrets(line)) };
}

export interface LoggerOptions {
  /** `gateway` or `worker`: the `app` field of every line. */
  app: string;
  level: LevelWithSilent;
  /** Defaults to stdout (synchronous, so nothing is lost when the process exits). */
  destination?: DestinationStream;
}

/** The structured JSON logger of a process: one line per event, ISO time, level names. */
export function createLogger(opts: LoggerOptions): Logger {
  return pino(
    {
      level: opts.level,
      base: { app: opts.app, pid: process.pid },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
      redact: { paths: REDACTED_PATHS, censor: '[redacted]' },
      // Fields the call passes win over the context's.
      mixin: () => {
        const ctx = requestContext.getStore();
        return ctx === undefined ? {} : { rid: ctx.rid };
      },
    },
    scrubbing(opts.destination ?? pino.destination({ dest: 1, sync: true })),
  );
}

const STACK = /\n\s+at /;

/**
 * Nest's LoggerService on top of pino, installed with `app.useLogger()`: every
 * `new Logger(Context).warn(...)` in the code base becomes one JSON line with `context`.
 * A message that is an object is merged into the line (its `msg` or `message` is the text).
 */
export class AppLogger implements LoggerService {
  constructor(readonly pino: Logger) {}

  log(message: unknown, ...params: unknown[]): void {
    this.write('info', message, params);
  }

  error(message: unknown, ...params: unknown[]): void {
    this.write('error', message, params);
  }

  warn(message: unknown, ...params: unknown[]): void {
    this.write('warn', message, params);
  }

  debug(message: unknown, ...params: unknown[]): void {
    this.write('debug', message, params);
  }

  verbose(message: unknown, ...params: unknown[]): void {
    this.write('trace', message, params);
  }

  fatal(message: unknown, ...params: unknown[]): void {
    this.write('fatal', message, params);
  }

  private write(level: Level, message: unknown, params: unknown[]): void {
    if (!this.pino.isLevelEnabled(level)) {
      return;
    }
    const fields: Record<string, unknown> = {};
    const rest = params.filter((p) => p !== undefined);
    // Nest passes the context last; Logger.error(message, stack, context) puts a stack before it.
    const last = rest.at(-1);
    if (typeof last === 'string' && !STACK.test(last)) {
      fields.context = last;
      rest.pop();
    }
    for (const p of rest) {
      if (typeof p === 'string' && STACK.test(p)) {
        fields.stack = p;
      } else if (p instanceof Error) {
        fields.err = p;
      }
    }
    let text: string | undefined;
    if (message instanceof Error) {
      fields.err = message;
      text = message.message;
    } else if (typeof message === 'object' && message !== null) {
      const { msg, message: m, ...others } = message as Record<string, unknown>;
      Object.assign(fields, others);
      text = typeof msg === 'string' ? msg : typeof m === 'string' ? m : undefined;
    } else {
      text = String(message);
    }
    this.pino[level](fields, text);
  }
}

/** What {@link reportFatal} needs to know of a configuration error (ConfigError, without importing config). */
interface NamedKeys {
  readonly keys?: readonly string[];
}

/**
 * Writes the error that stops the process as one JSON line: a configuration error by its
 * message and the keys at fault (no stack: the message says everything, and never a value),
 * anything else with its stack inside the line. Lines are scrubbed like every other.
 */
export function reportFatal(logger: Logger, err: unknown, what = 'boot failed'): void {
  const keys = err instanceof Error && err.name === 'ConfigError' ? (err as Error & NamedKeys).keys : undefined;
  if (keys !== undefined) {
    logger.fatal({ context: 'Config', keys }, (err as Error).message);
  } else {
    logger.fatal({ err }, `${what}: ${err instanceof Error ? err.message : String(err)}`);
  }
}

/**
 * Makes the process's own last-resort output JSON too: an uncaught exception or unhandled
 * rejection (Node would print plain text and a stack) becomes one fatal line before the
 * exit, and Node's warnings (deprecations, listener leaks) become warn lines instead of
 * plain stderr text.
 */
export function routeProcessOutput(logger: Logger): void {
  process.on('uncaughtException', (err) => {
    reportFatal(logger, err, 'uncaught exception');
    process.exit(1);
  });
  process.on('unhandledRejection', (reason) => {
    reportFatal(logger, reason, 'unhandled rejection');
    process.exit(1);
  });
  // Node's default printer is a 'warning' listener of its own; it is replaced, not joined.
  process.removeAllListeners('warning');
  process.on('warning', (w) =>
    logger.warn({ context: 'Node', warning: w.name, code: (w as { code?: string }).code }, w.message),
  );
}
