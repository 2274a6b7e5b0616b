import { createRequire } from 'node:module';
import type { Cluster, Redis } from 'ioredis';

/**
 * The Redis Cluster hash slot of a key (CRC16 of its hash tag, or of the whole key), as
 * ioredis computes it to route a command: its own `cluster-key-slot` dependency, so that
 * what Aqueduct asks of a slot's owner is where ioredis sent the key.
 */
export const hashSlot = createRequire(__filename)('cluster-key-slot') as (key: string) => number;

/**
 * The connection to the master that owns `key`'s slot, as ioredis' slot table has it now (the
 * one ioredis sends that key's commands on); undefined while no master is known for it.
 */
export function slotMaster(cluster: Cluster, key: string): Redis | undefined {
  const owner = cluster.slots[hashSlot(key)]?.[0];
  return owner === undefined
    ? undefined
    : cluster.nodes('master').find((n) => `${n.options.host}:${n.options.port}` === owner);
}

/** How long a master's replica count is trusted before it is asked again. */
const REPLICAS_TTL_MS = 5_000;

/**
 * How many replicas the master of a key's slot has now, from `ROLE` on that master, kept a
 * few seconds per master. Not from ioredis' slot table: `CLUSTER SLOTS` leaves out replicas
 * that have not reported an offset yet, and ioredis reloads the table only after a
 * redirection, so a table read at boot may list no replica for as long as the process runs.
 */
export class ShardReplicas {
  private readonly known = new Map<string, { count: number; at: number }>();
  private readonly asking = new Map<string, Promise<number>>();

  constructor(private readonly cluster: Cluster) {}

  /** 0 when there is none, or when the master cannot be asked right now. */
  async of(key: string): Promise<number> {
    const master = slotMaster(this.cluster, key);
    if (master === undefined) {
      return 0;
    }
    const id = `${master.options.host}:${master.options.port}`;
    const known = this.known.get(id);
    if (known !== undefined && Date.now() - known.at < REPLICAS_TTL_MS) {
      return known.count;
    }
    let asking = this.asking.get(id);
    if (asking === undefined) {
      asking = this.ask(id, master).finally(() => this.asking.delete(id));
      this.asking.set(id, asking);
    }
    // A count that went stale is used while the new one is on its way.
    return known?.count ?? asking;
  }

  private async ask(id: string, master: Redis): Promise<number> {
    try {
      const [role, , replicas] = (await master.call('ROLE')) as [string, number, unknown[]];
      const count = role === 'master' ? replicas.length : 0;
      this.known.set(id, { count, at: Date.now() });
      return count;
    } catch {
      return 0;
    }
  }
}
