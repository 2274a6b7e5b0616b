/** A worker can no longer reach the gateway that holds the request (publish failed, or nobody listens). */
export class RelayLostError extends Error {
  override readonly name = 'RelayLostError';
}
