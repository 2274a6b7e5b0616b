import type { Response } from 'express';

/**
 * Whether a response belongs to an admitted request. Admitted requests get a usage
 * record; everything answered before admission (400, 401, 403, 404, 413, 415, 429, 503)
 * is only counted (RefusalCounter), so a flood of refusals never grows Redis.
 */
const ADMITTED = 'aqueductAdmitted';

export function markAdmitted(res: Response): void {
  (res.locals as Record<string, unknown>)[ADMITTED] = true;
}

export function isAdmitted(res: Response): boolean {
  return (res.locals as Record<string, unknown>)[ADMITTED] === true;
}

/** True once the response has closed: its 'close' event already fired and will not again. */
export function clientGone(res: Response): boolean {
  return res.closed || res.destroyed;
}
