import { Inject } from '@nestjs/common';

/** The gateway's command connection (fail-fast: no offline queue). */
export const REDIS_COMMAND = Symbol('REDIS_COMMAND');
export const InjectRedis = () => Inject(REDIS_COMMAND);
