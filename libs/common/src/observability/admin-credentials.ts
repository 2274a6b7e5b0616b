import { createHash, timingSafeEqual } from 'node:crypto';
import { ApiError } from '../errors/api.error';

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

/** The realm browsers show in their login prompt for the dashboard. */
export const ADMIN_REALM = 'Aqueduct admin';
/** `WWW-Authenticate` of a 401 from a surface browsers and Prometheus open with HTTP Basic. */
export const BASIC_CHALLENGE = `Basic realm="${ADMIN_REALM}", charset="UTF-8"`;

/** Why an admin-only surface refuses a request: the error, and the challenge header to send with a 401. */
export interface AdminRefusal {
  error: ApiError;
  challenge?: string;
}

/**
 * The one admin check of every admin-only surface: the admin API (Bearer only), and the
 * dashboard and protected `/metrics` of gateway and worker (Bearer or HTTP Basic, which
 * browsers and Prometheus both speak). Undefined when the admin key was presented; an
 * ordinary API token is recognised and refused with 403, anything else with 401.
 * `what` names the surface in the messages, e.g. "the queue dashboard".
 */
export function adminRefusal(
  credentials: AdminCredentials,
  authorization: string | undefined,
  surface: { what: string; basic: boolean },
): AdminRefusal | undefined {
  const { what, basic } = surface;
  switch (credentials.check(authorization)) {
    case 'admin':
      return undefined;
    case 'api_token':
      return {
        error: new ApiError(
          403,
          `An API token cannot use ${what}: it needs the admin key.`,
          'permission_error',
          null,
          'admin_required',
        ),
      };
    case 'missing':
    case 'wrong': {
      const how = basic ? ' (HTTP Basic password, or a Bearer token)' : ' as a Bearer token';
      const message = `${what.charAt(0).toUpperCase()}${what.slice(1)} needs the admin key${how}.`;
      const error = new ApiError(401, message, 'invalid_request_error', null, 'invalid_api_key');
      return basic ? { error, challenge: BASIC_CHALLENGE } : { error };
    }
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
