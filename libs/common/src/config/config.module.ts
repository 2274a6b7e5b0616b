import { type DynamicModule, Global, Module } from '@nestjs/common';
import { AppLogger } from '../observability/logger';
import { AppConfig } from './app-config';

/**
 * The configuration and the JSON logger, both made by `main.ts` before Nest starts: a bad
 * configuration is then reported as one JSON line naming the key, and Nest's own first line
 * is already JSON (no buffered lines, nothing plain that could escape before the logger).
 */
@Global()
@Module({})
export class ConfigModule {
  static forRoot(config: AppConfig, logger: AppLogger): DynamicModule {
    return {
      module: ConfigModule,
      providers: [
        { provide: AppConfig, useValue: config },
        { provide: AppLogger, useValue: logger },
      ],
      exports: [AppConfig, AppLogger],
    };
  }
}
