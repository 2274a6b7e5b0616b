import { Worker } from 'bullmq';
import Redis from 'ioredis';
import { Pool } from 'undici';

/**
 * The floor's worker (see floor-gateway.ts): takes a job, POSTs its body to the upstream and
 * publishes the answer to the gateway's inbox. Concurrency 64, as Aqueduct's worker in the bench.
 *
 *   node floor-worker.js <redis url> <prefix> <upstream origin> <path>
 */
const [redisUrl, prefix, upstream, path] = process.argv.slice(2);
if (redisUrl === undefined || prefix === undefined || upstream === undefined || path === undefined) {
  throw new Error('usage: floor-worker <redis url> <prefix> <upstream origin> <path>');
}
const publisher = new Redis(redisUrl);
const pool = new Pool(upstream, { connections: 64 });

interface FloorJob {
  id: string;
  replyTo: string;
  body: string;
}

const worker = new Worker<FloorJob>(
  'floor',
  async (job) => {
    const res = await pool.request({
      method: 'POST',
      path,
      headers: { 'content-type': 'application/json' },
      body: job.data.body,
    });
    const text = await res.body.text();
    await publisher.publish(job.data.replyTo, `${job.data.id}|${text}`);
  },
  { connection: new Redis(redisUrl, { maxRetriesPerRequest: null }), prefix, concurrency: 64 },
);
void worker.waitUntilReady().then(() => process.send?.('ready'));
