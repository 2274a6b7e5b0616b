/** DI tokens for the @nestjs/microservices Redis transport instances of the control plane. */
export const CONTROL_SERVER = Symbol('CONTROL_SERVER');
export const CONTROL_CLIENT = Symbol('CONTROL_CLIENT');
