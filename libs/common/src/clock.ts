import { Injectable } from '@nestjs/common';

/** The wall clock, behind a class so that expiry and deadline logic can be tested. */
@Injectable()
export class Clock {
  now(): number {
    return Date.now();
  }
}
