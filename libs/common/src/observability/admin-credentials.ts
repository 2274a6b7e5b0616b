import { createHash, timingSafeEqual } from 'node:crypto';

const digest = (s: string) => createHash('sha256').update(s).digest();

/** How a request presented itself on an admin-only surface (dashboard, protected metrics). */
export type AdminCheck = 'admin' | 'api_token' | 'wrong' | 'missing';

/** Aqueduct API tokens have this shape; one is recognised (and refused) without a lookup. */
const API_TOKEN = /^sk-aq-[A-Za-z0-9_-]{20,}$/;

/**
 * Reads the admin key from `Authorization: Bearer <key>` (scripts, Prometheus
 * `authorization`) or `Authorization: Basic <base64(any-user:key)>` (browsers, Prometheus
 * `basic_auth`). Compared in constant time on digests, so not even the length leaks.
 */
export class AdminCredentials {
  private readonly adminDigest?: Buffer;

  constructor(adminKey: string | undefined) {
    this.adminDigest = adminKey === undefined ? undefined : digest(adminKey);
  }

  get configured(): boolean {
    return this.adminDigest !== undefined;
  }

  check(authorization: string | undefined): AdminCheck {
    const presented = presentedSecret(authorization);
    if (presented === undefined) {
      return 'missing';
    }
    if (this.adminDigest !== undefined && timingSafeEqual(digest(presented), this.adminDigest)) {
      return 'admin';
    }
    return API_TOKEN.test(presented) ? 'api_token' : 'wrong';
  }
}

/** The secret in a Bearer or Basic Authorization header (for Basic: the password). */
export function presentedSecret(authorization: string | undefined): string | undefined {
  if (authorization === undefined) {
    return undefined;
  }
  const bearer = /^Bearer\s+(\S+)\s*$/i.exec(authorization);
  if (bearer !== null) {
    return bearer[1];
  }
  const basic = /^Basic\s+([A-Za-z0-9+/=]+)\s*$/i.exec(authorization);
  if (basic?.[1] !== undefined) {
    const decoded = Buffer.from(basic[1], 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    const password = colon === -1 ? decoded : decoded.slice(colon + 1);
    return password === '' ? undefined : password;
  }
  return undefined;
}
