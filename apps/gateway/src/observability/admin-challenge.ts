import { type AdminCredentials, ApiError } from '@app/common';

/** The realm browsers show in their login prompt for the dashboard. */
export const ADMIN_REALM = 'Aqueduct admin';
export const BASIC_CHALLENGE = `Basic realm="${ADMIN_REALM}", charset="UTF-8"`;

/**
 * Admin-only surfaces that are not the JSON admin API (the dashboard, a protected
 * `/metrics`): the admin key as a Bearer token or as the password of HTTP Basic, which
 * browsers and Prometheus both speak. Throws the ApiError to send; returns when allowed.
 * `what` names the surface in the messages, e.g. "the queue dashboard".
 */
export function requireAdmin(credentials: AdminCredentials, authorization: string | undefined, what: string): void {
  switch (credentials.check(authorization)) {
    case 'admin':
      return;
    case 'api_token':
      throw new ApiError(
        403,
        `An API token cannot open ${what}: it needs the admin key.`,
        'permission_error',
        null,
        'admin_required',
      );
    case 'missing':
    case 'wrong':
      throw new ApiError(
        401,
        `${what.charAt(0).toUpperCase()}${what.slice(1)} needs the admin key (HTTP Basic password, or a Bearer token).`,
        'invalid_request_error',
        null,
        'invalid_api_key',
      );
  }
}
