import { Inject } from '@nestjs/common';

/** The worker's command connection: publishes relay messages, fails fast when Redis is down. */
export const REDIS_PUBLISHER = Symbol('REDIS_PUBLISHER');
export const InjectPublisher = () => Inject(REDIS_PUBLISHER);
export const CONTROL_SERVER = Symbol('CONTROL_SERVER');
export const CONTROL_CLIENT = Symbol('CONTROL_CLIENT');
