import { Inject } from '@nestjs/common';

/** The worker's command connection: publishes relay messages, fails fast when Redis is down. */
export const REDIS_PUBLISHER = Symbol('REDIS_PUBLISHER');
export const InjectPublisher = () => Inject(REDIS_PUBLISHER);
