import type { Response } from 'express';

/**
 * What the API path tells the HTTP observer about a response, kept on `res.locals`:
 * whether the request was admitted (admitted requests get a usage record; everything
 * answered before admission — 400, 401, 403, 404, 413, 415, 429, 503 — is only counted by
 * the RefusalCounter, so a flood of refusals never grows Redis), the canonical model it
 * resolved to (the metrics' `model` label), and when its first token was written.
 */
interface RequestState {
  admitted?: true;
  model?: string;
  /** performance.now() when the first output reached the client's socket buffer. */
  firstTokenAt?: number;
}

const KEY = 'aqueduct';

function state(res: Response): RequestState {
  const locals = res.locals as Record<string, RequestState | undefined>;
  return (locals[KEY] ??= {});
}

export function markAdmitted(res: Response): void {
  state(res).admitted = true;
}

export function isAdmitted(res: Response): boolean {
  return state(res).admitted === true;
}

/** Set once the model is resolved (also for a refusal after that, e.g. 403 or 429). */
export function labelModel(res: Response, model: string): void {
  state(res).model = model;
}

export function modelLabel(res: Response): string {
  return state(res).model ?? '';
}

/** Called by a responder when it writes its first output; later calls change nothing. */
export function markFirstToken(res: Response): void {
  state(res).firstTokenAt ??= performance.now();
}

export function firstTokenAt(res: Response): number | undefined {
  return state(res).firstTokenAt;
}

/** True once the response has closed: its 'close' event already fired and will not again. */
export function clientGone(res: Response): boolean {
  return res.closed || res.destroyed;
}
