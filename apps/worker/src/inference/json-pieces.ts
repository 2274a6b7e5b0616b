/**
 * `JSON.stringify(value)` of plain JSON data (what JSON.parse and the normalisers make), as
 * consecutive pieces: a string longer than `chunk` characters is encoded `chunk` characters
 * at a time, and a container whose JSON is about `chunk` characters or more is written
 * member by member; the rest is one JSON.stringify each. Joined, the pieces are exactly
 * `JSON.stringify(value)`.
 *
 * Why: one JSON.stringify of a 40 MB result held the worker's event loop for about a second
 * (measured: 0.93 s for the fake upstream's bulk text, whose quotes, backslashes and
 * non-ASCII make it slow to encode), so its lock renewals and heartbeats stopped and
 * every other stream of the worker stalled. Pieces let the caller yield between them.
 */
export function* jsonPieces(value: unknown, chunk: number): Generator<string> {
  if (typeof value === 'string') {
    if (value.length <= chunk) {
      yield JSON.stringify(value);
      return;
    }
    yield '"';
    for (let at = 0; at < value.length;) {
      let end = Math.min(value.length, at + chunk);
      // JSON.stringify escapes a lone surrogate: a pair must not be cut in two. It goes to
      // the next piece, or whole into this one when it would be all of it.
      if (end < value.length && isHighSurrogate(value.charCodeAt(end - 1))) {
        end += end - 1 > at ? -1 : 1;
      }
      yield JSON.stringify(value.slice(at, end)).slice(1, -1);
      at = end;
    }
    yield '"';
    return;
  }
  if (value === undefined || typeof value === 'function' || typeof value === 'symbol') {
    yield 'null'; // as JSON.stringify writes such a member of an array
    return;
  }
  if (value === null || typeof value !== 'object' || jsonSizeUpTo(value, chunk) <= chunk) {
    yield JSON.stringify(value);
    return;
  }
  if (Array.isArray(value)) {
    yield '[';
    for (let i = 0; i < value.length; i++) {
      if (i > 0) {
        yield ',';
      }
      yield* jsonPieces(value[i], chunk);
    }
    yield ']';
    return;
  }
  yield '{';
  let first = true;
  for (const [key, member] of Object.entries(value)) {
    if (member === undefined || typeof member === 'function' || typeof member === 'symbol') {
      continue; // JSON.stringify leaves such members out of an object
    }
    yield `${first ? '' : ','}${JSON.stringify(key)}:`;
    first = false;
    yield* jsonPieces(member, chunk);
  }
  yield '}';
}

/**
 * About how many characters `value`'s JSON has, counted only up to just past `limit` (so
 * asking costs at most that much walking): strings by length, any number as 24.
 */
export function jsonSizeUpTo(value: unknown, limit: number): number {
  let size = 0;
  const walk = (v: unknown): void => {
    if (size > limit) {
      return;
    }
    if (typeof v === 'string') {
      size += v.length + 2;
    } else if (typeof v === 'number') {
      size += 24;
    } else if (v === null || typeof v !== 'object') {
      size += 5;
    } else if (Array.isArray(v)) {
      size += 2;
      for (const item of v) {
        size += 1;
        walk(item);
        if (size > limit) {
          return;
        }
      }
    } else {
      size += 2;
      for (const [key, member] of Object.entries(v)) {
        size += key.length + 4;
        walk(member);
        if (size > limit) {
          return;
        }
      }
    }
  };
  walk(value);
  return size;
}

export function isHighSurrogate(code: number): boolean {
  return code >= 0xd800 && code <= 0xdbff;
}
