import { Global, Injectable, Module, type OnApplicationShutdown } from '@nestjs/common';
import { Queue } from 'bullmq';
import { AppConfig } from '../config/app-config';
import type { CompletionJobData, CompletionJobResult } from '../contracts/completion-job';
import { modelQueueName } from '../names';
import { connectRedis, type RedisClient } from '../redis/redis-factory';
import { trackBullmq } from '../redis/shutdown';
import { watchBullmq } from '../redis/connection-state-log';
import { modelCapacity } from '../scheduling/turns';

export type InferenceQueue = Queue<CompletionJobData, CompletionJobResult>;
export type QueueRole = 'producer' | 'consumer';

/**
 * BullMQ's marker (what a Worker blocked on the queue waits for), set when a job waits: the
 * wait list and the prioritized set hold the queue's waiting jobs. Marker score 0 means
 * "a job is ready now", as BullMQ's own scripts set it. All three keys share the queue's tag.
 */
const WAKE_LUA = `
if redis.call('LLEN', KEYS[1]) > 0 or redis.call('ZCARD', KEYS[2]) > 0 then
  redis.call('ZADD', KEYS[3], 0, '0')
  return 1
end
return 0
`;
type WakeCommand = (wait: string, prioritized: string, marker: string) => Promise<number>;

/**
 * One BullMQ queue per model of the router config (see {@link modelQueueName}), all on one
 * shared connection: a model's waiting requests are its queue's jobs, and its capacity is
 * the queue's global concurrency. Idle queues cost nothing (no polling, no connection).
 */
@Injectable()
export class ModelQueues implements OnApplicationShutdown {
  /** The connection every queue of this process shares (workers' blocking fetches have their own). */
  readonly connection: RedisClient;
  private readonly byModel = new Map<string, InferenceQueue>();
  private readonly wakeCmd: WakeCommand;

  constructor(
    private readonly config: AppConfig,
    readonly role: QueueRole,
  ) {
    // A producer (gateway) must fail fast while Redis is down, so requests get 503 at once; a
    // consumer (worker) blocks on Redis. Both coalesce writes: BullMQ's scripts for many jobs
    // leave in one write per callback (coalesce-writes.ts). On a cluster BullMQ takes the Cluster
    // itself: each queue's keys share its model's hash tag (see modelQueueName).
    this.connection = connectRedis(config.env, role === 'producer' ? 'queue-producer' : 'queue-consumer');
    // BullMQ attaches its own listeners to the shared connection; one per queue is expected.
    this.connection.setMaxListeners(0);
    for (const model of config.router.models) {
      const queue: InferenceQueue = new Queue(modelQueueName(model.name), {
        connection: this.connection,
        prefix: config.names.bullPrefix,
      });
      // BullMQ emits 'error' on connection problems (an EventEmitter without a listener would
      // crash); outages are logged once per state change, not on every reconnect attempt.
      watchBullmq(queue, 'queue');
      this.byModel.set(model.name, queue);
    }
    this.connection.defineCommand('aqueductWakeQueue', { numberOfKeys: 3, lua: WAKE_LUA });
    const commands = this.connection as unknown as { aqueductWakeQueue: WakeCommand };
    this.wakeCmd = commands.aqueductWakeQueue.bind(this.connection);
    const first = this.byModel.values().next().value;
    if (first !== undefined) {
      trackBullmq(first); // they share one connection: closing one closes it for all
    }
  }

  /** The queue of a canonical model name (the gateway resolved it); throws for an unknown one. */
  for(model: string): InferenceQueue {
    const queue = this.byModel.get(model);
    if (queue === undefined) {
      throw new Error(`no queue for model ${model}`);
    }
    return queue;
  }

  entries(): IterableIterator<[string, InferenceQueue]> {
    return this.byModel.entries();
  }

  /**
   * Makes each queue's global concurrency its model's capacity (or removes it when the
   * model is unlimited), so that BullMQ hands a job to a worker only when some deployment
   * has room: a waiting request holds no worker slot. Every worker sets it at boot from
   * the same router config; the last one to boot wins during a rolling config change.
   */
  async applyCapacities(): Promise<void> {
    await Promise.all(
      this.config.router.models.map((model) => {
        const capacity = modelCapacity(model);
        const queue = this.for(model.name);
        return capacity === undefined ? queue.removeGlobalConcurrency() : queue.setGlobalConcurrency(capacity);
      }),
    );
  }

  /**
   * Wakes a Worker blocked on the model's queue when requests wait in it: for a slot of the
   * model's capacity that was freed without being handed on (the worker's model.worker.ts).
   * True when one was waiting.
   */
  async wake(model: string): Promise<boolean> {
    const queue = this.for(model);
    return (await this.wakeCmd(queue.toKey('wait'), queue.toKey('prioritized'), queue.toKey('marker'))) === 1;
  }

  async onApplicationShutdown(): Promise<void> {
    await Promise.all([...this.byModel.values()].map((q) => q.close().catch(() => undefined)));
    this.connection.disconnect();
  }
}

/** The model queues, as both apps need them (`forRole('producer')` in the gateway, `'consumer'` in workers). */
@Global()
@Module({})
export class QueueModule {
  static forRole(role: QueueRole) {
    return {
      module: QueueModule,
      providers: [
        { provide: ModelQueues, inject: [AppConfig], useFactory: (c: AppConfig) => new ModelQueues(c, role) },
      ],
      exports: [ModelQueues],
    };
  }
}
