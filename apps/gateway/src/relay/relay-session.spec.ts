import type { RelayMessage } from '@app/common';
import { describe, expect, it } from 'vitest';
import { RelaySession } from './relay-session';

const chunk = (seq: number, att = 0, text = `t${seq}`): RelayMessage => ({
  t: 'chunk',
  rid: 'r',
  att,
  seq,
  choices: [{ index: 0, text, logprobs: null, finish_reason: null }],
});

function collect() {
  const seen: RelayMessage[] = [];
  return { seen, session: new RelaySession('r', 'm', (m) => seen.push(m)) };
}

describe('RelaySession', () => {
  it('counts parts of a non-stream result as output; only the result ends the session', () => {
    const { seen, session } = collect();
    session.accept({ t: 'start', rid: 'r', att: 0, seq: 0, workerId: 'w', deployment: 'd' }, 1);
    expect(session.hasOutput).toBe(false);
    const part = (seq: number): RelayMessage => ({
      t: 'part',
      rid: 'r',
      att: 0,
      seq,
      raw: `[{"index":0,"text":"p${seq}"`,
    });
    session.accept(part(1), 2);
    expect(session.hasOutput).toBe(true);
    expect(session.isClosed).toBe(false);
    session.accept(part(2), 3);
    session.accept({ t: 'result', rid: 'r', att: 0, seq: 3, usage: null }, 4);
    expect(session.isClosed).toBe(true);
    expect(session.closedAt).toBe(4);
    expect(seen.map((m) => m.t)).toEqual(['start', 'part', 'part', 'result']);
  });

  it('fails on a lost part instead of answering with a hole in the text', () => {
    const { seen, session } = collect();
    session.accept({ t: 'part', rid: 'r', att: 0, seq: 0, raw: '[' }, 1);
    session.accept({ t: 'part', rid: 'r', att: 0, seq: 2, raw: ']' }, 2);
    expect(seen.at(-1)).toMatchObject({ t: 'error', status: 502 });
    expect(session.isClosed).toBe(true);
  });

  it('delivers messages in sequence and closes on the terminal message', () => {
    const { seen, session } = collect();
    session.accept(chunk(0), 1);
    session.accept(chunk(1), 2);
    session.accept({ t: 'done', rid: 'r', att: 0, seq: 2, usage: null }, 3);
    session.accept(chunk(3), 4);
    expect(seen.map((m) => m.seq)).toEqual([0, 1, 2]);
    expect(session.isClosed).toBe(true);
    expect(session.lastActivity).toBe(3);
  });

  it('drops duplicates', () => {
    const { seen, session } = collect();
    session.accept(chunk(0), 1);
    session.accept(chunk(0), 1);
    session.accept(chunk(1), 1);
    expect(seen.map((m) => m.seq)).toEqual([0, 1]);
  });

  it('turns a gap into one error instead of silently wrong output', () => {
    const { seen, session } = collect();
    session.accept(chunk(0), 1);
    session.accept(chunk(2), 1);
    session.accept(chunk(3), 1);
    expect(seen).toHaveLength(2);
    expect(seen[1]).toMatchObject({ t: 'error', status: 502 });
  });

  it('ignores stale attempts after a retry', () => {
    const { seen, session } = collect();
    session.accept({ t: 'start', rid: 'r', att: 0, seq: 0, workerId: 'w1', deployment: 'd' }, 1);
    expect(session.started).toBe(true);
    expect(session.nextAttempt()).toBe(1);
    expect(session.started).toBe(false);
    session.accept(chunk(1, 0), 2);
    session.accept(chunk(0, 1, 'fresh'), 3);
    expect(seen.map((m) => [m.att, m.seq])).toEqual([
      [0, 0],
      [1, 0],
    ]);
  });

  it('fail() reports once and stops delivery', () => {
    const { seen, session } = collect();
    session.fail(504, 'late', 'timeout');
    session.fail(502, 'again');
    session.accept(chunk(0), 1);
    expect(seen).toEqual([
      {
        t: 'error',
        rid: 'r',
        att: 0,
        seq: 0,
        status: 504,
        error: { message: 'late', type: 'server_error', param: null, code: 'timeout' },
      },
    ]);
  });

  it('looks up a queued attempt nobody has been heard from after 1 s, then ever less often, never once heard from', () => {
    const { session } = collect();
    expect(session.probeDue(10_000), 'not before its job exists').toBe(false);
    session.queued(0, 10_000);
    expect(session.probeDue(10_999)).toBe(false);
    expect(session.probeDue(11_000)).toBe(true);
    session.probed(11_000); // 1 s old: next look 1 s later
    expect(session.probeDue(11_999)).toBe(false);
    expect(session.probeDue(12_000)).toBe(true);
    session.probed(14_000); // 4 s old: next look 4 s later
    expect(session.probeDue(17_999)).toBe(false);
    expect(session.probeDue(18_000)).toBe(true);
    session.probed(30_000); // 20 s old: every 8 s at most
    expect(session.probeDue(38_000)).toBe(true);
    session.accept({ t: 'start', rid: 'r', att: 0, seq: 0, workerId: 'w', deployment: 'd' }, 38_001);
    expect(session.probeDue(60_000), 'heard from').toBe(false);
  });

  it('forgets the look-ups of an attempt it left, and ignores the enqueue of an older one', () => {
    const { session } = collect();
    session.queued(0, 0);
    session.nextAttempt();
    expect(session.probeDue(5_000)).toBe(false);
    session.queued(0, 5_000); // attempt 0's enqueue, answered late
    expect(session.probeDue(10_000)).toBe(false);
    session.queued(1, 5_000);
    expect(session.probeDue(6_000)).toBe(true);
    session.fail(502, 'gone');
    expect(session.probeDue(7_000), 'ended').toBe(false);
  });
});
