/** Small pure helpers the pages share: seed parsing and time formatting. */

/** Seeds are unsigned 32-bit integers (what the core's generator takes). */
export const MAX_SEED = 2 ** 32 - 1;

export type Parsed<T> = { ok: true; value: T } | { ok: false; error: string };

export function isSeed(value: number): boolean {
  return Number.isInteger(value) && value >= 0 && value <= MAX_SEED;
}

/** "1, 2, 42" -> [1, 2, 42]; duplicates are kept out, order is kept. */
export function parseSeedList(text: string): Parsed<number[]> {
  const parts = text
    .split(/[\s,]+/)
    .map((part) => part.trim())
    .filter((part) => part !== '');
  if (parts.length === 0) return { ok: false, error: 'Enter at least one seed, e.g. "1, 2, 3".' };
  const seeds: number[] = [];
  for (const part of parts) {
    const seed = /^\d+$/.test(part) ? Number(part) : NaN;
    if (!isSeed(seed)) return { ok: false, error: `"${part}" is not a seed: use whole numbers from 0 to ${MAX_SEED}.` };
    if (!seeds.includes(seed)) seeds.push(seed);
  }
  return { ok: true, value: seeds };
}

/** `count` consecutive seeds starting at `base`. */
export function seedRange(base: number, count: number): Parsed<number[]> {
  if (!isSeed(base)) return { ok: false, error: `The base seed must be a whole number from 0 to ${MAX_SEED}.` };
  if (!Number.isInteger(count) || count < 1) return { ok: false, error: 'The count must be a whole number of at least 1.' };
  if (base + count - 1 > MAX_SEED) return { ok: false, error: `The last seed would pass ${MAX_SEED}: lower the base seed.` };
  return { ok: true, value: Array.from({ length: count }, (_, i) => base + i) };
}

export function randomSeed(): number {
  const [value] = crypto.getRandomValues(new Uint32Array(1));
  return value;
}

/** 42_000 -> "0:42", 3_723_000 -> "1:02:03". */
export function formatEta(ms: number): string {
  if (!Number.isFinite(ms) || ms < 0) return '–';
  const total = Math.round(ms / 1000);
  const hours = Math.floor(total / 3600);
  const minutes = Math.floor((total % 3600) / 60);
  const seconds = String(total % 60).padStart(2, '0');
  return hours > 0 ? `${hours}:${String(minutes).padStart(2, '0')}:${seconds}` : `${minutes}:${seconds}`;
}

/** 3_240 -> "3.2 s", 420 -> "420 ms". */
export function formatDuration(ms: number): string {
  if (!Number.isFinite(ms)) return '–';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  return formatEta(ms);
}

export function formatDate(iso: string): string {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}

export function plural(count: number, one: string, many = `${one}s`): string {
  return `${count} ${count === 1 ? one : many}`;
}
