/**
 * emoji-data's `emoji.json` → one record per image of a set: names, short
 * names, category and subcategory, skin-tone variants (named as such) and
 * the caption variants the model is trained on.
 */
import type { EmojiSet } from './sources.ts';

interface RawVariation {
  unified: string;
  image: string;
  has_img_google?: boolean;
  has_img_twitter?: boolean;
}

interface RawEmoji extends RawVariation {
  name: string | null;
  short_name?: string;
  short_names?: string[];
  category: string;
  subcategory: string;
  sort_order?: number;
  skin_variations?: Record<string, RawVariation>;
}

export interface EmojiImage {
  set: EmojiSet;
  /** Code points, e.g. "1F44B-1F3FD". */
  unified: string;
  /** File name under img/<set>/64/. */
  image: string;
  /** Lower case; skin-tone variants carry their tone: "waving hand sign: medium skin tone". */
  name: string;
  /** The emoji this image is a variant of (itself for a base emoji): its lower-case name and code. */
  baseName: string;
  baseUnified: string;
  shortNames: string[];
  category: string;
  subcategory: string;
  /** "medium skin tone" (or "light skin tone, dark skin tone" for two people); null for a base emoji. */
  skinTone: string | null;
  sortOrder: number;
  captions: string[];
}

export interface SkippedEmoji {
  unified: string;
  name: string;
  reason: string;
}

/** Fitzpatrick modifiers as CLDR names them. */
export const SKIN_TONES: Readonly<Record<string, string>> = {
  '1F3FB': 'light skin tone',
  '1F3FC': 'medium-light skin tone',
  '1F3FD': 'medium skin tone',
  '1F3FE': 'medium-dark skin tone',
  '1F3FF': 'dark skin tone',
};

/** "1F3FD" → "medium skin tone"; "1F3FB-1F3FF" → "light skin tone, dark skin tone"; "1F3FB-1F3FB" → "light skin tone". */
export function skinToneName(key: string): string {
  const codes = key.toUpperCase().split('-');
  const names = codes.map((c) => {
    const n = SKIN_TONES[c];
    if (!n) throw new Error(`unknown skin tone modifier '${c}' in '${key}'`);
    return n;
  });
  return [...new Set(names)].join(', ');
}

/** CLDR style: "x: tone", or "x, tone" when the name already has a qualifier ("kiss: man, man, light skin tone"). */
export function withTone(name: string, tone: string): string {
  return name.includes(':') ? `${name}, ${tone}` : `${name}: ${tone}`;
}

/** Lower case, underscores to spaces, whitespace collapsed. */
export function normalizeSubject(s: string): string {
  return s.toLowerCase().replace(/_/g, ' ').replace(/\s+/g, ' ').trim();
}

function article(s: string): string {
  if (/^(uni|use|usi|eu|one\b|u\b)/.test(s)) return 'a';
  if (/^(hour|honou?r|honest)/.test(s) || /^[aeiou]/.test(s) || /^[8]/.test(s)) return 'an';
  return 'a';
}

/**
 * Captions for one image: for the name and each short name, "an emoji of a
 * …", "…" and "a … icon"; a skin tone is appended to each. Lower case,
 * without repeats, name-based captions first.
 */
export function captionsFor(subjects: readonly string[], tone: string | null): string[] {
  const out = new Set<string>();
  for (const raw of subjects) {
    const s = normalizeSubject(raw);
    if (!s) continue;
    const suffix = tone ? `, ${tone}` : '';
    out.add(`${article('emoji')} emoji of ${article(s)} ${s}${suffix}`);
    out.add(tone ? withTone(s, tone) : s);
    out.add(`${article(s)} ${s} icon${suffix}`);
  }
  return [...out].map((c) => c.toLowerCase());
}

function hasImage(v: RawVariation, set: EmojiSet): boolean {
  return set === 'google' ? v.has_img_google === true : v.has_img_twitter === true;
}

function str(v: unknown, what: string): string {
  if (typeof v !== 'string' || v === '') throw new Error(`emoji.json: ${what} is not a non-empty string (${JSON.stringify(v)})`);
  return v;
}

/**
 * The images of `set` listed in an emoji.json, in emoji order (sort_order),
 * each base emoji followed by its skin-tone variants. Entries the set has no
 * image for are returned in `skipped`.
 */
export function emojiImages(json: unknown, set: EmojiSet): { images: EmojiImage[]; skipped: SkippedEmoji[] } {
  if (!Array.isArray(json)) throw new Error('emoji.json: expected an array of emoji');
  const rows = (json as RawEmoji[]).map((e, i) => ({ e, i }));
  rows.sort((a, b) => (a.e.sort_order ?? Infinity) - (b.e.sort_order ?? Infinity) || a.i - b.i);
  const images: EmojiImage[] = [];
  const skipped: SkippedEmoji[] = [];
  for (const { e } of rows) {
    const unified = str(e.unified, 'unified');
    const shortNames = Array.isArray(e.short_names) ? e.short_names.filter((s): s is string => typeof s === 'string') : e.short_name ? [e.short_name] : [];
    const baseName = normalizeSubject(e.name ?? shortNames[0] ?? unified);
    const common = {
      set,
      baseName,
      baseUnified: unified,
      shortNames,
      category: str(e.category, `category of ${unified}`),
      subcategory: str(e.subcategory, `subcategory of ${unified}`),
      sortOrder: e.sort_order ?? 0,
    };
    const subjects = [baseName, ...shortNames];
    if (hasImage(e, set)) {
      images.push({ ...common, unified, image: str(e.image, `image of ${unified}`), name: baseName, skinTone: null, captions: captionsFor(subjects, null) });
    } else {
      skipped.push({ unified, name: baseName, reason: `no ${set} image` });
    }
    for (const [key, v] of Object.entries(e.skin_variations ?? {})) {
      const tone = skinToneName(key);
      const name = withTone(baseName, tone);
      const vu = str(v.unified, `unified of a skin variation of ${unified}`);
      if (!hasImage(v, set)) {
        skipped.push({ unified: vu, name, reason: `no ${set} image` });
        continue;
      }
      images.push({ ...common, unified: vu, image: str(v.image, `image of ${vu}`), name, skinTone: tone, captions: captionsFor(subjects, tone) });
    }
  }
  return { images, skipped };
}
