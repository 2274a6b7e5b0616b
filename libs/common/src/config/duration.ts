/** Parses "30d", "12h", "15m", "45s" or a bare number of seconds into seconds. */
export function parseDurationSeconds(text: string): number {
  const m = /^(\d+(?:\.\d+)?)\s*([smhdw]?)$/.exec(text.trim());
  if (m === null) {
    throw new Error(`invalid duration '${text}': use e.g. 45s, 15m, 12h, 30d or 2w`);
  }
  const unit = { '': 1, s: 1, m: 60, h: 3600, d: 86_400, w: 604_800 }[m[2] as '' | 's' | 'm' | 'h' | 'd' | 'w'];
  const seconds = Number(m[1]) * unit;
  if (seconds <= 0) {
    throw new Error(`invalid duration '${text}': must be positive`);
  }
  return seconds;
}
