import { describe, expect, it } from 'vitest';
import { jsonPieces, jsonSizeUpTo } from './json-pieces';

const joined = (value: unknown, chunk: number) => [...jsonPieces(value, chunk)].join('');

describe('jsonPieces', () => {
  // Quotes, backslashes, control characters, non-ASCII and astral characters (surrogate pairs).
  const tricky = 'a"b\\c\nd\te\u0001f é ✓ 😀😀 "x" \\\\ 😀';

  it('joins to exactly JSON.stringify for strings cut at every possible place', () => {
    for (let chunk = 1; chunk <= tricky.length + 1; chunk++) {
      expect(joined(tricky, chunk), `chunk ${chunk}`).toBe(JSON.stringify(tricky));
    }
  });

  it('never cuts a surrogate pair: each piece is valid JSON string content on its own', () => {
    const text = '😀'.repeat(50);
    for (const chunk of [1, 2, 3, 7]) {
      const pieces = [...jsonPieces(text, chunk)];
      expect(pieces.length).toBeGreaterThan(2);
      for (const piece of pieces.slice(1, -1)) {
        expect(piece).not.toMatch(/\\ud[89a-f]/i); // no lone surrogate escaped
        expect(JSON.parse(`"${piece}"`)).toMatch(/^(😀)+$/u);
      }
    }
  });

  it('joins to exactly JSON.stringify for nested results, with members that have no JSON', () => {
    const value = [
      { index: 0, text: tricky.repeat(40), logprobs: null, finish_reason: 'stop', gone: undefined },
      {
        index: 1,
        message: { role: 'assistant', content: null, tool_calls: [{ id: 't', arguments: tricky.repeat(9) }] },
        n: [1, 2.5, -3e-7, 0],
        flags: [true, false, null, undefined],
      },
      { object: 'embedding', embedding: Array.from({ length: 300 }, (_, i) => i / 7) },
      [],
      {},
      '',
    ];
    for (const chunk of [1, 5, 16, 64, 1_000, 100_000]) {
      expect(joined(value, chunk), `chunk ${chunk}`).toBe(JSON.stringify(value));
    }
  });

  it('writes a small value as one piece and a large one as many bounded ones', () => {
    expect([...jsonPieces([{ text: 'hello' }], 1_000)]).toEqual([JSON.stringify([{ text: 'hello' }])]);
    const big = [{ index: 0, text: 'x'.repeat(10_000) }];
    const pieces = [...jsonPieces(big, 1_000)];
    expect(pieces.length).toBeGreaterThan(10);
    expect(Math.max(...pieces.map((p) => p.length))).toBeLessThanOrEqual(1_002);
  });
});

describe('jsonSizeUpTo', () => {
  it('approximates the JSON size and stops counting past the limit', () => {
    const value = [{ text: 'x'.repeat(100) }, { text: 'y'.repeat(100) }];
    const size = jsonSizeUpTo(value, 10_000);
    expect(size).toBeGreaterThanOrEqual(JSON.stringify(value).length);
    expect(jsonSizeUpTo(value, 50)).toBeLessThan(size);
    expect(jsonSizeUpTo(value, 50)).toBeGreaterThan(50);
  });
});
