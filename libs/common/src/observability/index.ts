export * from './admin-credentials';
export * from './logger';
