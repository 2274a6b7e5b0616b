import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { Cluster } from 'ioredis';
import type { RedisClient } from '@app/common';

/** Clock ticks per second for /proc/<pid>/stat; 100 on virtually every Linux, asked anyway. */
const CLK_TCK = (() => {
  try {
    const n = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim());
    return Number.isFinite(n) && n > 0 ? n : 100;
  } catch {
    return 100;
  }
})();

/**
 * CPU time (user + system, all threads) a process has used so far, in ms. Read from
 * /proc so that child processes can be measured from outside without instrumenting them.
 */
export function processCpuMs(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  // The command name (field 2) is in parentheses and may itself contain spaces or ')'.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  // After the name, fields start at #3 (state); utime is #14 and stime #15.
  const utime = Number(fields[14 - 3]);
  const stime = Number(fields[15 - 3]);
  return ((utime + stime) * 1000) / CLK_TCK;
}

/** Resident memory of a process in MiB, from /proc/<pid>/status (VmRSS, in kB). */
export function rssMiB(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m === null ? Number.NaN : Number(m[1]) / 1024;
}

/** Redis server CPU (main process, user + system) so far, in ms, from `INFO cpu`; on a cluster, every master's. */
export async function redisCpuMs(redis: RedisClient): Promise<number> {
  const nodes = redis instanceof Cluster ? redis.nodes('master') : [redis];
  const infos = await Promise.all(nodes.map((node) => node.info('cpu')));
  let ms = 0;
  for (const info of infos) {
    const field = (name: string) => Number(new RegExp(`^${name}:([0-9.]+)`, 'm').exec(info)?.[1] ?? Number.NaN);
    ms += (field('used_cpu_sys') + field('used_cpu_user')) * 1000;
  }
  return ms;
}

export interface CpuSnapshot {
  [component: string]: number;
}

/** Samples several CPU counters at once and gives deltas later. */
export class CpuMeter {
  constructor(
    private readonly pids: Record<string, number>,
    private readonly redis: RedisClient,
  ) {}

  async sample(): Promise<CpuSnapshot> {
    const snap: CpuSnapshot = {};
    for (const [name, pid] of Object.entries(this.pids)) {
      snap[name] = processCpuMs(pid);
    }
    const self = process.cpuUsage();
    snap.bench = (self.user + self.system) / 1000;
    snap.redis = await redisCpuMs(this.redis);
    return snap;
  }

  static delta(before: CpuSnapshot, after: CpuSnapshot): CpuSnapshot {
    const out: CpuSnapshot = {};
    for (const [k, v] of Object.entries(after)) {
      out[k] = v - (before[k] ?? 0);
    }
    return out;
  }
}
