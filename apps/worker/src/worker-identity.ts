import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { Injectable } from '@nestjs/common';

/** This worker process's id, in heartbeats, logs and `start` messages. */
@Injectable()
export class WorkerIdentity {
  readonly id = `wk-${hostname()}-${process.pid}-${randomBytes(3).toString('hex')}`;
}
