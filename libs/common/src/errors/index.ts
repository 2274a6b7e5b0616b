export * from './api.error';
export * from './cancelled.error';
export * from './deadline.error';
export * from './rate-limit.error';
export * from './relay-lost.error';
