import type * as NestCommon from '@nestjs/common';

/** The Logger methods the shared Redis modules write with. */
export interface LogLines {
  log(message: unknown, ...rest: unknown[]): void;
  warn(message: unknown, ...rest: unknown[]): void;
  error(message: unknown, ...rest: unknown[]): void;
}

/**
 * Nest's Logger for `context` (pino JSON in the gateway and the workers), with @nestjs/common
 * loaded when the first line is written rather than when the module is. The shared Redis
 * modules log through it and the CLI loads them too: importing @nestjs/common at load time
 * was 180 ms of the CLI's 450 ms start, for lines the CLI almost never writes.
 */
export function lazyLogger(context: string): LogLines {
  let logger: NestCommon.Logger | undefined;
  const get = (): NestCommon.Logger => {
    if (logger === undefined) {
      // eslint-disable-next-line @typescript-eslint/no-require-imports -- loaded on first use, see above
      const nest = require('@nestjs/common') as typeof NestCommon;
      logger = new nest.Logger(context);
    }
    return logger;
  };
  return {
    log: (message, ...rest) => get().log(message, ...rest),
    warn: (message, ...rest) => get().warn(message, ...rest),
    error: (message, ...rest) => get().error(message, ...rest),
  };
}
