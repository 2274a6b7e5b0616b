export * from './control.module';
export * from './queue.module';
