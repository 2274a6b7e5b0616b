/** A job reached its deadline (the request's timeout) before it finished. */
export class DeadlineError extends Error {
  override readonly name = 'DeadlineError';

  constructor() {
    super('the request deadline passed');
  }
}
