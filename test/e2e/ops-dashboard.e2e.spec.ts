import { randomUUID } from 'node:crypto';
import { modelQueueName } from '@app/common';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { postCompletion } from '../support/http';
import { simulatorDeployment, writeModelList } from '../support/router-config';
import { Stack } from '../support/stack';

/**
 * Operations, item 1: the Bull Board queue dashboard at /admin/queues. Protected by the
 * admin key in a way a browser can use (HTTP Basic), refused to API tokens, read-only,
 * and showing job data without request content or credentials. Without an admin key it
 * does not exist. Also: /metrics behind the admin key when AQUEDUCT_METRICS_REQUIRE_ADMIN.
 */

const ADMIN_KEY = 'dashboard-admin-key-0123456789';
const basic = (password: string, user = 'admin') => `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;

describe('queue dashboard', () => {
  let stack: Stack;
  let key: string;
  const get = (path: string, authorization?: string, method = 'GET') =>
    fetch(`${stack.baseUrl}${path}`, {
      method,
      headers: authorization === undefined ? {} : { authorization },
    });

  beforeAll(async () => {
    const config = writeModelList(simulatorDeployment('slow', 'lorem', { ttft_ms: 4000 }));
    stack = await Stack.start('ops-dash', {
      routerConfig: config,
      env: { AQUEDUCT_ADMIN_KEY: ADMIN_KEY, AQUEDUCT_METRICS_REQUIRE_ADMIN: 'true', WORKER_METRICS_PORT: '0' },
    });
    key = await stack.createKey();
  });

  afterAll(async () => {
    await stack?.stop();
  });

  it('asks a browser for the admin key with a Basic challenge', async () => {
    for (const auth of [undefined, basic('not-the-admin-key'), 'Bearer not-the-admin-key']) {
      const res = await get('/admin/queues', auth);
      expect(res.status, String(auth)).toBe(401);
      expect(res.headers.get('www-authenticate')).toMatch(/^Basic realm="Aqueduct admin"/);
      expect(((await res.json()) as { error: { code: string } }).error.code).toBe('invalid_api_key');
    }
  });

  it('opens with the admin key as the Basic password (any user name) or as a Bearer token', async () => {
    for (const auth of [basic(ADMIN_KEY), basic(ADMIN_KEY, ''), `Bearer ${ADMIN_KEY}`]) {
      const res = await get('/admin/queues', auth);
      expect(res.status).toBe(200);
      expect(res.headers.get('content-type')).toMatch(/^text\/html/);
      expect(res.headers.get('x-frame-options')).toBe('DENY');
      expect(await res.text()).toContain('<!DOCTYPE html>');
    }
    // The UI's own assets and API sit under the same prefix and the same protection.
    expect((await get('/admin/queues/static/images/logo.svg', basic(ADMIN_KEY))).status).toBe(200);
    expect((await get('/admin/queues/static/images/logo.svg')).status).toBe(401);
    expect((await get('/admin/queues/api/queues')).status).toBe(401);
  });

  it('serves every asset of its page itself: no fonts, styles or scripts from another host', async () => {
    const page = await get('/admin/queues', basic(ADMIN_KEY));
    expect(page.status).toBe(200);
    // The browser enforces it too, should a later Bull Board link something external.
    const csp = page.headers.get('content-security-policy') ?? '';
    expect(csp).toMatch(/default-src 'self'/);
    expect(csp).not.toMatch(/https?:/);
    const html = await page.text();
    const base = new URL(/<base href="([^"]+)"/.exec(html)?.[1] ?? '/admin/queues/', stack.baseUrl);
    expect(base.origin).toBe(stack.baseUrl);
    // Every URL the page names in an attribute a browser loads (link, script, img, …).
    const urls = [...html.matchAll(/\s(?:href|src)\s*=\s*["']?([^"'\s>]+)/gi)].map(
      (m) => new URL(m[1] as string, base),
    );
    expect(urls.length).toBeGreaterThan(3);
    expect(urls.filter((u) => u.origin !== stack.baseUrl).map(String)).toEqual([]);
    expect(html).not.toMatch(/(?:https?:)?\/\/fonts\.(?:googleapis|gstatic)\.com/);

    const styles = [...html.matchAll(/<link\b[^>]*>/gi)]
      .map((m) => m[0])
      .filter((tag) => /\brel="stylesheet"/i.test(tag))
      .map((tag) => new URL(/\bhref="([^"]+)"/.exec(tag)?.[1] ?? '', base));
    const scripts = [...html.matchAll(/<script\b[^>]*\bsrc="([^"]+)"/gi)].map((m) => new URL(m[1] as string, base));
    expect(styles.length).toBeGreaterThan(0);
    expect(scripts.length).toBeGreaterThan(0);
    for (const url of [...styles, ...scripts]) {
      const res = await get(url.pathname, basic(ADMIN_KEY));
      expect(res.status, url.pathname).toBe(200);
      const text = await res.text();
      if (styles.includes(url)) {
        // No @import or url() that leaves the gateway (fonts, images).
        const refs = [...text.matchAll(/(?:@import\s+(?:url\()?|url\()\s*["']?([^"')\s;]+)/g)].map(
          (m) => m[1] as string,
        );
        expect(
          refs.filter((r) => /^(?:https?:)?\/\//.test(r)),
          url.pathname,
        ).toEqual([]);
      }
    }
  });

  it('refuses an ordinary API token, as Bearer or as Basic password', async () => {
    for (const auth of [`Bearer ${key}`, basic(key)]) {
      const res = await get('/admin/queues', auth);
      expect(res.status).toBe(403);
      expect(((await res.json()) as { error: { code: string } }).error.code).toBe('admin_required');
      expect((await get('/admin/queues/api/queues', auth)).status).toBe(403);
    }
  });

  it('shows every model queue and its jobs without prompts, tokens or keys', async () => {
    const prompt = `dashboard-prompt-${randomUUID()}`;
    const upstreamLike = `sk-${randomUUID().replaceAll('-', '')}`;
    const abort = new AbortController();
    const body = { model: 'slow', prompt, max_tokens: 3, stream: true, api_key: upstreamLike };
    const inFlight = postCompletion(stack.baseUrl, key, body, abort.signal).catch(() => undefined);
    try {
      let body = '';
      let jobs: { data: Record<string, unknown>; name: string }[] = [];
      for (let i = 0; i < 50 && jobs.length === 0; i++) {
        await new Promise((r) => setTimeout(r, 50));
        const res = await get(
          `/admin/queues/api/queues?activeQueue=${encodeURIComponent(modelQueueName('slow'))}&status=active&page=1&jobsPerPage=10`,
          basic(ADMIN_KEY),
        );
        expect(res.status).toBe(200);
        body = await res.text();
        const queues = (JSON.parse(body) as { queues: { name: string; readOnlyMode: boolean; jobs: typeof jobs }[] })
          .queues;
        // One queue per model, its waiting line included.
        expect(queues.map((q) => q.name)).toEqual([modelQueueName('slow')]);
        expect(queues[0]?.readOnlyMode).toBe(true);
        jobs = queues[0]?.jobs ?? [];
      }
      expect(jobs).toHaveLength(1);
      const data = jobs[0]?.data as { model: string; tokenId: string; params: Record<string, unknown> };
      expect(jobs[0]?.name).toBe('completion');
      expect(data.model).toBe('slow');
      expect(data.tokenId).toMatch(/^tok_/);
      expect(data.params.prompt).toBe(`[redacted: ${prompt.length} characters]`);
      expect(data.params.max_tokens).toBe(3);
      for (const secret of [prompt, key, upstreamLike, ADMIN_KEY]) {
        expect(body).not.toContain(secret);
      }
      // Read-only: actions are refused by Bull Board itself.
      const pause = await get(
        `/admin/queues/api/queues/${encodeURIComponent(modelQueueName('slow'))}/pause`,
        basic(ADMIN_KEY),
        'PUT',
      );
      expect(pause.status).toBe(405);
    } finally {
      abort.abort();
      await inFlight;
    }
  });

  it('puts /metrics behind the admin key when AQUEDUCT_METRICS_REQUIRE_ADMIN is set', async () => {
    const open = await get('/metrics');
    expect(open.status).toBe(401);
    expect(open.headers.get('www-authenticate')).toMatch(/^Basic /);
    expect((await get('/metrics', `Bearer ${key}`)).status).toBe(403);
    const scraped = await get('/metrics', basic(ADMIN_KEY, 'prometheus'));
    expect(scraped.status).toBe(200);
    expect(await scraped.text()).toContain('aqueduct_http_requests_total');
    expect((await get('/metrics', `Bearer ${ADMIN_KEY}`)).status).toBe(200);
    // Probes stay open.
    expect((await get('/health')).status).toBe(200);
    expect((await get('/ready')).status).toBe(200);
  });
});

describe('queue dashboard without an admin key', () => {
  let stack: Stack;

  beforeAll(async () => {
    stack = await Stack.start('ops-nodash', { env: { WORKER_METRICS_PORT: '0' } });
  });

  afterAll(async () => {
    await stack?.stop();
  });

  it('answers 404 like the rest of /admin, whatever the credentials', async () => {
    const key = await stack.createKey();
    for (const path of ['/admin/queues', '/admin/queues/', '/admin/queues/api/queues', '/admin/queues/static/x.js']) {
      const variants: Record<string, string>[] = [
        {},
        { authorization: `Bearer ${key}` },
        { authorization: basic('anything') },
      ];
      for (const headers of variants) {
        const res = await fetch(`${stack.baseUrl}${path}`, { headers });
        expect(res.status, path).toBe(404);
        expect(res.headers.get('www-authenticate')).toBeNull();
        expect(((await res.json()) as { error: { code: string } }).error.code).toBe('unknown_url');
      }
    }
  });
});
