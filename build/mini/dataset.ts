/**
 * lethe-mini dataset builder: emoji artwork (Noto Emoji and Twemoji, from
 * the pinned emoji-data npm packages) → 32x32 training images with captions.
 *
 *   tsx build/mini/dataset.ts [--out DIR] [--sets google,twitter] [--limit N] [--cache DIR] [--fresh]
 *
 * Output folder (default build/.cache/mini/dataset/):
 *   images.f16.safetensors  `images`: float16 [N,3,32,32] in [-1,1] (RGB on white)
 *   index.json              per image: id (row), set, unified, name, category, subcategory,
 *                           skinTone, captions; the concept list and the category tree
 *   LICENSES.md             licences and the Twemoji attribution
 *   preview-<set>.png       the first 256 images of a set, 16x16 grid of 32 px tiles
 *   preview-<set>-spread.png  256 images spread over the whole set
 *   .parts/                 per-set results, reused by the next run (resume)
 *
 * The source packages are fetched with `npm pack` into the cache only when
 * they are not there yet (build/.cache/mini/ by default).
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { writePng } from '../../core/diffusion/png.ts';
import { f32ToF16, writeSafetensors } from '../../core/io/safetensors.ts';
import { emojiImages, type EmojiImage, type SkippedEmoji } from './emoji-meta.ts';
import { licensesMarkdown } from './licenses.ts';
import { PixelPipeline, pngToRgba, SOURCE_SIZE, TARGET_SIZE } from './pixels.ts';
import { DEFAULT_CACHE_DIR, EMOJI_SETS, ensureSource, SOURCE_PACKAGES, type EmojiSet, type PackFn } from './sources.ts';

/** Bump when the pixels or records a part holds change, so cached parts are rebuilt. */
export const PIPELINE_VERSION = 1;
export const FORMAT = 'lethe-mini-dataset/1';
export const IMAGES_FILE = 'images.f16.safetensors';
export const INDEX_FILE = 'index.json';
export const LICENSES_FILE = 'LICENSES.md';
const PER_IMAGE = 3 * TARGET_SIZE * TARGET_SIZE;
const GRID = 16;

export interface BuildOptions {
  /** Output folder; default build/.cache/mini/dataset/. */
  out?: string;
  sets?: readonly EmojiSet[];
  /** At most this many images per set (in emoji order). */
  limit?: number;
  /** Where fetched packages are cached; default build/.cache/mini/. */
  cacheDir?: string;
  /** Source trees (the folder holding emoji.json and img/) per set; skips the cache and fetching. */
  sources?: Partial<Record<EmojiSet, string>>;
  /** Fetcher for a package tarball (default: npm pack). */
  pack?: PackFn;
  /** Ignore cached per-set parts. */
  fresh?: boolean;
  batchSize?: number;
  threads?: number;
  onProgress?: (p: Progress) => void;
  log?: (line: string) => void;
}

export interface Progress {
  set: EmojiSet;
  done: number;
  total: number;
  seconds: number;
}

export interface IndexImage {
  /** Row in the `images` tensor. */
  id: number;
  set: EmojiSet;
  unified: string;
  name: string;
  /** The concept (base emoji) this image shows: its unified code, the key of `concepts`. */
  concept: string;
  shortNames: string[];
  category: string;
  subcategory: string;
  skinTone: string | null;
  captions: string[];
}

export interface IndexConcept {
  /** Unified code of the base emoji. */
  id: string;
  name: string;
  shortNames: string[];
  category: string;
  subcategory: string;
  sets: EmojiSet[];
  /** Images of the concept (all sets, skin tones included). */
  imageIds: number[];
  skinToneVariants: number;
}

export interface IndexCategory {
  name: string;
  concepts: number;
  images: number;
  subcategories: { name: string; concepts: number; images: number }[];
}

export interface DatasetIndex {
  format: string;
  createdAt: string;
  sources: { set: EmojiSet; package: string; version: string; integrity: string }[];
  tensor: { file: string; name: string; dtype: 'float16'; shape: number[]; layout: 'NCHW'; range: [number, number]; background: 'white' };
  counts: { images: number; perSet: Partial<Record<EmojiSet, number>>; skinToneImages: number; concepts: number; categories: number; subcategories: number };
  images: IndexImage[];
  concepts: IndexConcept[];
  categories: IndexCategory[];
  skipped: (SkippedEmoji & { set: EmojiSet })[];
}

export interface BuildResult {
  out: string;
  files: Record<string, number>;
  index: DatasetIndex;
  seconds: { total: number; sources: number; pixels: number };
  /** Sets whose pixels came from .parts/ (not recomputed). */
  reused: EmojiSet[];
}

interface SetPart {
  key: string;
  images: EmojiImage[];
  skipped: SkippedEmoji[];
  f16: Uint16Array;
  preview: Uint8Array;
  reused: boolean;
}

export async function buildDataset(o: BuildOptions = {}): Promise<BuildResult> {
  const t0 = performance.now();
  const cacheDir = path.resolve(o.cacheDir ?? DEFAULT_CACHE_DIR);
  const out = path.resolve(o.out ?? path.join(cacheDir, 'dataset'));
  const sets = [...new Set(o.sets ?? EMOJI_SETS)];
  for (const s of sets) if (!EMOJI_SETS.includes(s)) throw new Error(`unknown emoji set '${s}' (expected ${EMOJI_SETS.join(', ')})`);
  if (sets.length === 0) throw new Error('no emoji sets selected');
  if (o.limit !== undefined && (!Number.isInteger(o.limit) || o.limit < 1)) throw new Error(`--limit must be a positive integer, got ${o.limit}`);
  const log = o.log ?? (() => {});
  mkdirSync(path.join(out, '.parts'), { recursive: true });

  const parts = new Map<EmojiSet, SetPart>();
  let sourceSeconds = 0;
  let pixelSeconds = 0;
  let pipeline: PixelPipeline | null = null;
  let license: string | undefined;
  try {
    for (const set of sets) {
      const ts = performance.now();
      const root = o.sources?.[set] ?? (await ensureSource(set, { cacheDir, pack: o.pack, log }));
      sourceSeconds += (performance.now() - ts) / 1000;
      const licenseFile = path.join(root, 'LICENSE');
      if (license === undefined && existsSync(licenseFile)) license = readFileSync(licenseFile, 'utf8');

      const tp = performance.now();
      const json = readFileSync(path.join(root, 'emoji.json'));
      const key = createHash('sha256').update(JSON.stringify({ v: PIPELINE_VERSION, set, limit: o.limit ?? null })).update(json).digest('hex').slice(0, 16);
      const cached = o.fresh ? null : loadPart(out, set, key);
      if (cached) {
        log(`[${set}] ${cached.images.length} images from ${path.join(out, '.parts')} (cached)`);
        parts.set(set, cached);
        continue;
      }
      pipeline ??= await PixelPipeline.create(o.batchSize ?? 256, o.threads);
      const part = await buildSet(set, root, JSON.parse(json.toString('utf8')), key, pipeline, o, tp);
      savePart(out, set, part);
      parts.set(set, part);
      pixelSeconds += (performance.now() - tp) / 1000;
    }
  } finally {
    await pipeline?.release();
  }

  // Assemble: rows in set order, each set in emoji order.
  const all: { img: EmojiImage; id: number }[] = [];
  let n = 0;
  for (const set of sets) for (const img of parts.get(set)!.images) all.push({ img, id: n++ });
  const f16 = new Uint16Array(n * PER_IMAGE);
  let at = 0;
  for (const set of sets) {
    const p = parts.get(set)!;
    f16.set(p.f16, at);
    at += p.f16.length;
  }

  const index = makeIndex(sets, all, parts);
  const files: Record<string, number> = {};
  const put = (name: string, write: (file: string) => void): void => {
    const file = path.join(out, name);
    write(file);
    files[name] = statSync(file).size;
  };
  put(IMAGES_FILE, (f) =>
    writeSafetensors(f, { images: { dtype: 'F16', shape: [n, 3, TARGET_SIZE, TARGET_SIZE], data: f16 } }, {
      format: FORMAT,
      sets: sets.join(','),
      count: String(n),
      index: INDEX_FILE,
    }),
  );
  // Previews of an earlier run (other sets, a larger --limit) would not match this dataset.
  for (const f of readdirSync(out)) if (/^preview-.*\.png$/.test(f)) rmSync(path.join(out, f), { force: true });
  for (const set of sets) {
    const p = parts.get(set)!;
    const count = p.images.length;
    if (count === 0) continue;
    const first = Array.from({ length: Math.min(GRID * GRID, count) }, (_, i) => i);
    put(`preview-${set}.png`, (f) => writePreviewGrid(f, p.preview, first));
    if (count > GRID * GRID) {
      const spread = Array.from({ length: GRID * GRID }, (_, i) => Math.floor((i * count) / (GRID * GRID)));
      put(`preview-${set}-spread.png`, (f) => writePreviewGrid(f, p.preview, spread));
    }
  }
  put(LICENSES_FILE, (f) => writeFileAtomic(f, licensesMarkdown(sets, index.counts.perSet, license)));
  // The index goes last: a folder with an index.json is complete.
  put(INDEX_FILE, (f) => writeFileAtomic(f, `${JSON.stringify(index, null, 1)}\n`));

  const total = (performance.now() - t0) / 1000;
  return { out, files, index, seconds: { total, sources: sourceSeconds, pixels: pixelSeconds }, reused: sets.filter((s) => parts.get(s)!.reused) };
}

async function buildSet(set: EmojiSet, root: string, json: unknown, key: string, pipe: PixelPipeline, o: BuildOptions, t0: number): Promise<SetPart> {
  const listed = emojiImages(json, set);
  const skipped = [...listed.skipped];
  const dir = path.join(root, 'img', set, String(SOURCE_SIZE));
  let images: EmojiImage[] = [];
  for (const img of listed.images) {
    if (existsSync(path.join(dir, img.image))) images.push(img);
    else skipped.push({ unified: img.unified, name: img.name, reason: `image file img/${set}/${SOURCE_SIZE}/${img.image} missing` });
  }
  if (o.limit !== undefined) images = images.slice(0, o.limit);

  const total = images.length;
  const f16 = new Uint16Array(total * PER_IMAGE);
  const preview = new Uint8Array(total * PER_IMAGE);
  for (let start = 0; start < total; start += pipe.batch) {
    const count = Math.min(pipe.batch, total - start);
    for (let i = 0; i < count; i++) {
      const file = path.join(dir, images[start + i].image);
      const { width, height, rgba } = pngToRgba(readFileSync(file), file);
      if (width !== SOURCE_SIZE || height !== SOURCE_SIZE) throw new Error(`${file}: ${width}x${height}, expected ${SOURCE_SIZE}x${SOURCE_SIZE}`);
      pipe.set(i, rgba);
    }
    const r = await pipe.run(count);
    f16.set(f32ToF16(r.images), start * PER_IMAGE);
    preview.set(r.preview, start * PER_IMAGE);
    o.onProgress?.({ set, done: start + count, total, seconds: (performance.now() - t0) / 1000 });
  }
  if (total === 0) o.onProgress?.({ set, done: 0, total, seconds: (performance.now() - t0) / 1000 });
  return { key, images, skipped, f16, preview, reused: false };
}

function makeIndex(sets: readonly EmojiSet[], all: { img: EmojiImage; id: number }[], parts: Map<EmojiSet, SetPart>): DatasetIndex {
  const images: IndexImage[] = all.map(({ img, id }) => ({
    id,
    set: img.set,
    unified: img.unified,
    name: img.name,
    concept: img.baseUnified,
    shortNames: img.shortNames,
    category: img.category,
    subcategory: img.subcategory,
    skinTone: img.skinTone,
    captions: img.captions,
  }));

  const concepts = new Map<string, IndexConcept & { order: number }>();
  for (const { img, id } of all) {
    let c = concepts.get(img.baseUnified);
    if (!c) {
      c = {
        id: img.baseUnified, name: img.baseName, shortNames: img.shortNames, category: img.category, subcategory: img.subcategory,
        sets: [], imageIds: [], skinToneVariants: 0, order: img.sortOrder,
      };
      concepts.set(img.baseUnified, c);
    }
    if (!c.sets.includes(img.set)) c.sets.push(img.set);
    c.imageIds.push(id);
    if (img.skinTone) c.skinToneVariants++;
  }
  const conceptList = [...concepts.values()].sort((a, b) => a.order - b.order).map(({ order: _order, ...c }) => c);

  const cats = new Map<string, { concepts: Set<string>; images: number; subs: Map<string, { concepts: Set<string>; images: number }> }>();
  for (const { img } of all) {
    const cat = cats.get(img.category) ?? { concepts: new Set(), images: 0, subs: new Map() };
    cats.set(img.category, cat);
    const sub = cat.subs.get(img.subcategory) ?? { concepts: new Set(), images: 0 };
    cat.subs.set(img.subcategory, sub);
    cat.concepts.add(img.baseUnified);
    sub.concepts.add(img.baseUnified);
    cat.images++;
    sub.images++;
  }
  const categories: IndexCategory[] = [...cats].map(([name, c]) => ({
    name,
    concepts: c.concepts.size,
    images: c.images,
    subcategories: [...c.subs].map(([s, v]) => ({ name: s, concepts: v.concepts.size, images: v.images })),
  }));

  const perSet: Partial<Record<EmojiSet, number>> = {};
  for (const s of sets) perSet[s] = parts.get(s)!.images.length;
  return {
    format: FORMAT,
    createdAt: new Date().toISOString(),
    sources: sets.map((s) => ({ set: s, package: SOURCE_PACKAGES[s].name, version: SOURCE_PACKAGES[s].version, integrity: SOURCE_PACKAGES[s].integrity })),
    tensor: { file: IMAGES_FILE, name: 'images', dtype: 'float16', shape: [images.length, 3, TARGET_SIZE, TARGET_SIZE], layout: 'NCHW', range: [-1, 1], background: 'white' },
    counts: {
      images: images.length,
      perSet,
      skinToneImages: images.filter((i) => i.skinTone !== null).length,
      concepts: conceptList.length,
      categories: categories.length,
      subcategories: categories.reduce((s, c) => s + c.subcategories.length, 0),
    },
    images,
    concepts: conceptList,
    categories,
    skipped: sets.flatMap((s) => parts.get(s)!.skipped.map((k) => ({ set: s, ...k }))),
  };
}

/** A grid of 32 px tiles (16 per row) on white, from [N,32,32,3] preview bytes. */
export function writePreviewGrid(file: string, preview: Uint8Array, which: readonly number[]): void {
  const s = TARGET_SIZE;
  const rows = Math.max(1, Math.ceil(which.length / GRID));
  const w = GRID * s;
  const h = rows * s;
  const rgb = new Uint8Array(w * h * 3).fill(255);
  which.forEach((img, k) => {
    const ox = (k % GRID) * s;
    const oy = Math.floor(k / GRID) * s;
    for (let y = 0; y < s; y++) {
      const src = (img * s * s + y * s) * 3;
      rgb.set(preview.subarray(src, src + s * 3), ((oy + y) * w + ox) * 3);
    }
  });
  writePng(file, rgb, w, h);
}

// ---------------------------------------------------------------- per-set parts (resume)

function partPaths(out: string, set: EmojiSet): { meta: string; f16: string; preview: string } {
  const base = path.join(out, '.parts', set);
  return { meta: `${base}.json`, f16: `${base}.f16`, preview: `${base}.preview` };
}

function loadPart(out: string, set: EmojiSet, key: string): SetPart | null {
  const p = partPaths(out, set);
  try {
    const meta = JSON.parse(readFileSync(p.meta, 'utf8')) as { key: string; images: EmojiImage[]; skipped: SkippedEmoji[] };
    if (meta.key !== key) return null;
    const f16b = readFileSync(p.f16);
    const preview = new Uint8Array(readFileSync(p.preview));
    const want = meta.images.length * PER_IMAGE;
    if (f16b.byteLength !== want * 2 || preview.length !== want) return null;
    const f16 = new Uint16Array(want);
    new Uint8Array(f16.buffer).set(f16b);
    return { key, images: meta.images, skipped: meta.skipped, f16, preview, reused: true };
  } catch {
    return null;
  }
}

function savePart(out: string, set: EmojiSet, part: SetPart): void {
  const p = partPaths(out, set);
  rmSync(p.meta, { force: true }); // the meta file goes last: it marks the part complete
  writeFileAtomic(p.f16, new Uint8Array(part.f16.buffer, part.f16.byteOffset, part.f16.byteLength));
  writeFileAtomic(p.preview, part.preview);
  writeFileAtomic(p.meta, JSON.stringify({ key: part.key, images: part.images, skipped: part.skipped }));
}

function writeFileAtomic(file: string, data: string | Uint8Array): void {
  const tmp = `${file}.tmp-${process.pid}`;
  try {
    writeFileSync(tmp, data);
    renameSync(tmp, file);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
}

// ---------------------------------------------------------------- CLI

export function parseCli(argv: readonly string[]): BuildOptions {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      out: { type: 'string' },
      sets: { type: 'string' },
      limit: { type: 'string' },
      cache: { type: 'string' },
      fresh: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    process.stdout.write('usage: tsx build/mini/dataset.ts [--out DIR] [--sets google,twitter] [--limit N] [--cache DIR] [--fresh]\n');
    process.exit(0);
  }
  const sets = values.sets?.split(',').map((s) => s.trim()).filter(Boolean) as EmojiSet[] | undefined;
  const limit = values.limit === undefined ? undefined : Number(values.limit);
  if (limit !== undefined && !(Number.isInteger(limit) && limit > 0)) throw new Error(`--limit must be a positive integer, got '${values.limit}'`);
  return { out: values.out, sets, limit, cacheDir: values.cache, fresh: values.fresh };
}

function mb(bytes: number): string {
  return bytes >= 1e6 ? `${(bytes / 1e6).toFixed(1)} MB` : `${(bytes / 1e3).toFixed(1)} kB`;
}

async function main(): Promise<void> {
  const options = parseCli(process.argv.slice(2));
  const tty = process.stderr.isTTY;
  let lastTenth = -1;
  const result = await buildDataset({
    ...options,
    log: (line) => process.stderr.write(`${line}\n`),
    onProgress: (p) => {
      const pct = p.total ? Math.floor((100 * p.done) / p.total) : 100;
      const line = `[${p.set}] ${p.done}/${p.total} images (${pct}%) ${p.seconds.toFixed(1)} s`;
      if (tty) process.stderr.write(`\r${line}${p.done === p.total ? '\n' : ''}`);
      else if (Math.floor(pct / 10) !== lastTenth || p.done === p.total) process.stderr.write(`${line}\n`);
      lastTenth = p.done === p.total ? -1 : Math.floor(pct / 10);
    },
  });
  const c = result.index.counts;
  const perSet = Object.entries(c.perSet).map(([s, k]) => `${s} ${k}`).join(', ');
  process.stdout.write(
    [
      `dataset: ${result.out}`,
      `images: ${c.images} (${perSet}; ${c.skinToneImages} skin-tone variants), concepts: ${c.concepts}, categories: ${c.categories}, subcategories: ${c.subcategories}`,
      ...Object.entries(result.files).map(([f, size]) => `  ${f}  ${mb(size)}`),
      `time: ${result.seconds.total.toFixed(1)} s (sources ${result.seconds.sources.toFixed(1)} s, pixels ${result.seconds.pixels.toFixed(1)} s${result.reused.length ? `; reused ${result.reused.join(', ')}` : ''})`,
      '',
    ].join('\n'),
  );
}

if (process.argv[1] && import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href) {
  main().catch((e: unknown) => {
    process.stderr.write(`\nerror: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  });
}
