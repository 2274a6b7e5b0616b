import { randomUUID } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { raw } from '../support/contract-helpers';
import { type FakeUpstream, startFakeUpstream } from '../support/fake-upstream';
import { simulatorDeployment, upstreamDeployment, writeModelList } from '../support/router-config';
import { Stack } from '../support/stack';

/**
 * Operations, item 4: structured JSON logs. A full request cycle at LOG_LEVEL=trace, then
 * the captured stdout/stderr of the gateway and the worker is searched for the API key,
 * the upstream key, the admin key, the prompt and the completion: none may appear. Every
 * line is JSON, and the request lines carry the request id, token id, model, status and
 * latency (the worker's also the deployment).
 */

const ADMIN_KEY = `admin-${randomUUID()}`;
const UPSTREAM_KEY = `upstream-${randomUUID()}`;

describe('structured logs', () => {
  let upstream: FakeUpstream;
  let stack: Stack;
  let key: string;
  let tokenId: string;
  const prompt = `logged-prompt-${randomUUID()}`;
  const completions: string[] = [];
  const rids: string[] = [];
  let lines: Record<string, unknown>[] = [];
  let output = '';

  /** One completion request, its request id noted in `rids` (in order) to find its log lines. */
  const post = async (body: Record<string, unknown>, bearer = key) => {
    const res = await raw(stack, body, { key: bearer });
    rids.push(res.headers.get('x-request-id') ?? '');
    return res;
  };

  beforeAll(async () => {
    upstream = await startFakeUpstream();
    const config = writeModelList(
      upstreamDeployment('up', upstream.url, { api_key: 'os.environ/OPS_UPSTREAM_KEY' }),
      simulatorDeployment('sim', 'lorem', { itl_ms: 1 }),
    );
    stack = await Stack.start('ops-logs', {
      routerConfig: config,
      env: {
        LOG_LEVEL: 'trace',
        AQUEDUCT_ADMIN_KEY: ADMIN_KEY,
        OPS_UPSTREAM_KEY: UPSTREAM_KEY,
        WORKER_METRICS_PORT: '0',
      },
    });
    const created = await stack.tokens.create({ name: 'logs' });
    key = created.key;
    tokenId = created.token.id;

    // The full cycle: upstream and simulator, stream and not, errors, admin API, dashboard, probes.
    const whole = await post({ model: 'up', prompt, max_tokens: 8 });
    expect(whole.status).toBe(200);
    completions.push((JSON.parse(whole.text) as { choices: { text: string }[] }).choices[0]?.text ?? '');
    const streamed = await post({ model: 'up', prompt, stream: true, stream_options: { include_usage: true } });
    expect(streamed.status).toBe(200);
    const sim = await post({ model: 'sim', prompt, max_tokens: 12 });
    completions.push((JSON.parse(sim.text) as { choices: { text: string }[] }).choices[0]?.text ?? '');
    expect((await post({ model: 'up', prompt, fake_fail: 'status:500' })).status).toBeGreaterThanOrEqual(500);
    expect((await post({ model: 'nope', prompt })).status).toBe(404);
    expect((await post({ model: 'sim', prompt }, `sk-aq-${'x'.repeat(43)}`)).status).toBe(401);
    const admin = { authorization: `Bearer ${ADMIN_KEY}` };
    expect((await fetch(`${stack.baseUrl}/admin/tokens`, { headers: admin })).status).toBe(200);
    expect((await fetch(`${stack.baseUrl}/admin/queues`, { headers: admin })).status).toBe(200);
    expect((await fetch(`${stack.baseUrl}/metrics`)).status).toBe(200);
    expect(upstream.requests.at(0)?.headers.authorization).toBe(`Bearer ${UPSTREAM_KEY}`);

    // Let the worker write its last job line, then stop everything so the output is complete.
    await new Promise((r) => setTimeout(r, 300));
    await Promise.all([stack.gateway.stop(), ...stack.workers.map((w) => w.stop())]);
    output = [stack.gateway.output(), ...stack.workers.map((w) => w.output())].join('\n');
    lines = output
      .split('\n')
      .filter((l) => l.trim() !== '')
      .map((l) => {
        try {
          return JSON.parse(l) as Record<string, unknown>;
        } catch {
          return { unparsed: l };
        }
      });
  });

  afterAll(async () => {
    await stack?.stop();
    await upstream?.close();
  });

  it('writes only JSON lines, down to trace level', () => {
    expect(lines.length).toBeGreaterThan(20);
    expect(lines.filter((l) => 'unparsed' in l)).toEqual([]);
    const levels = new Set(lines.map((l) => l.level));
    expect(levels.has('debug')).toBe(true); // probes are logged at debug
    expect(lines.every((l) => l.app === 'gateway' || l.app === 'worker')).toBe(true);
    // Nest's own boot lines went through the JSON logger too.
    expect(lines.some((l) => l.context === 'RouterExplorer')).toBe(true);
  });

  it('never logs the API key, the upstream key, the admin key, the prompt or the completion', () => {
    expect(completions.every((c) => c.length > 10)).toBe(true);
    for (const secret of [key, key.slice(6, 30), UPSTREAM_KEY, ADMIN_KEY, prompt, ...completions]) {
      expect(output).not.toContain(secret);
    }
    expect(output).not.toMatch(/sk-aq-x{20}/);
  });

  it('logs each request with its request id, token id, model, status and latency', () => {
    const first = lines.find((l) => l.app === 'gateway' && l.rid === rids[0] && l.msg === 'request completed');
    expect(first).toMatchObject({
      rid: rids[0],
      token_id: tokenId,
      model: 'up',
      status: 200,
      method: 'POST',
      route: '/v1/completions',
    });
    expect(typeof first?.latency_ms).toBe('number');
    const streamed = lines.find((l) => l.app === 'gateway' && l.rid === rids[1] && l.msg === 'request completed');
    expect(typeof streamed?.ttft_ms).toBe('number');
    const missing = lines.find((l) => l.rid === rids[4] && l.msg === 'request completed');
    expect(missing).toMatchObject({ status: 404, token_id: tokenId });
    const unauthorized = lines.find((l) => l.rid === rids[5] && l.msg === 'request completed');
    expect(unauthorized).toMatchObject({ status: 401 });
    expect(unauthorized).not.toHaveProperty('token_id');
  });

  it('logs each job in the worker with its deployment, joined to the request by rid', () => {
    const job = lines.find((l) => l.app === 'worker' && l.rid === rids[0] && l.msg === 'job finished');
    expect(job).toMatchObject({
      token_id: tokenId,
      model: 'up',
      deployment: 'up#0',
      status: 200,
      outcome: 'ok',
      context: 'WorkerUsageService',
    });
    expect(job?.completion_tokens).toBeGreaterThan(0);
    const failed = lines.find((l) => l.app === 'worker' && l.rid === rids[3] && l.msg === 'job finished');
    expect(failed).toMatchObject({ level: 'warn', outcome: 'error', deployment: 'up#0' });
  });
});
