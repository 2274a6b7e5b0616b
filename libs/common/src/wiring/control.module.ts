import { Global, Inject, Module } from '@nestjs/common';
import { AppConfig } from '../config/app-config';
import { createControlClient, createControlServer } from '../redis/control-transport';

/** DI tokens for the @nestjs/microservices Redis transport instances of the control plane. */
export const CONTROL_SERVER = Symbol('CONTROL_SERVER');
export const CONTROL_CLIENT = Symbol('CONTROL_CLIENT');
export const InjectControlServer = () => Inject(CONTROL_SERVER);
export const InjectControlClient = () => Inject(CONTROL_CLIENT);

/**
 * The control plane's transport (cancel, drain, heartbeats), the same in both apps: a
 * server that receives commands and a client that emits them.
 */
@Global()
@Module({
  providers: [
    {
      provide: CONTROL_SERVER,
      inject: [AppConfig],
      useFactory: (config: AppConfig) => createControlServer(config.env),
    },
    {
      provide: CONTROL_CLIENT,
      inject: [AppConfig],
      useFactory: (config: AppConfig) => createControlClient(config.env),
    },
  ],
  exports: [CONTROL_SERVER, CONTROL_CLIENT],
})
export class ControlModule {}
