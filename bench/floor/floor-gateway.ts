import { createServer } from 'node:http';
import { Queue } from 'bullmq';
import Redis from 'ioredis';

/**
 * The least a gateway can do and still follow the contract's pipeline (gateway → BullMQ →
 * worker → backend → Redis → gateway): take the HTTP body, add it as a BullMQ job, answer with
 * what the worker publishes on this process's inbox. No authentication, validation, limits,
 * usage, retries or timeouts. `npm run bench:floor` measures it beside Aqueduct: the gap
 * between the two is what Aqueduct's features and design cost; the floor itself is what the
 * pipeline costs on this machine, which no implementation of the contract can go below.
 *
 *   node floor-gateway.js <port> <redis url> <prefix>
 */
const [port, redisUrl, prefix] = process.argv.slice(2);
if (port === undefined || redisUrl === undefined || prefix === undefined) {
  throw new Error('usage: floor-gateway <port> <redis url> <prefix>');
}
const queue = new Queue('floor', { connection: new Redis(redisUrl, { maxRetriesPerRequest: null }), prefix });
const subscriber = new Redis(redisUrl);
const inbox = `${prefix}:inbox:${process.pid}`;
/** Waiting responses, by request id: the worker's message starts with `<id>|`. */
const waiting = new Map<string, (status: number, body: string) => void>();
let seq = 0;

subscriber.on('message', (_channel: string, message: string) => {
  const bar = message.indexOf('|');
  const id = message.slice(0, bar);
  waiting.get(id)?.(200, message.slice(bar + 1));
  waiting.delete(id);
});

void subscriber.subscribe(inbox).then(() => {
  createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (chunk: string) => (body += chunk));
    req.on('end', () => {
      const id = String(++seq);
      waiting.set(id, (status, text) => {
        res.writeHead(status, { 'content-type': 'application/json' });
        res.end(text);
      });
      queue
        .add(
          'c',
          { id, replyTo: inbox, body },
          { jobId: `${process.pid}.${id}`, removeOnComplete: true, removeOnFail: true },
        )
        .catch((err: Error) => {
          waiting.delete(id);
          res.writeHead(500).end(err.message);
        });
    });
  }).listen(Number(port), '127.0.0.1', () => process.send?.('ready'));
});
