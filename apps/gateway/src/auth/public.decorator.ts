import { SetMetadata } from '@nestjs/common';

export const IS_PUBLIC = 'aqueduct:public';
/** Marks a route that needs no bearer token (health, readiness). */
export const Public = () => SetMetadata(IS_PUBLIC, true);
