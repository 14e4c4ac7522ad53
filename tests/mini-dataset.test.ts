import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { decode, encode } from 'fast-png';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildDataset, parseCli, type BuildResult, type DatasetIndex } from '../build/mini/dataset.ts';
import { captionsFor, emojiImages, skinToneName, withTone } from '../build/mini/emoji-meta.ts';
import { TWEMOJI_ATTRIBUTION } from '../build/mini/licenses.ts';
import { pngToRgba } from '../build/mini/pixels.ts';
import { ensureSource, keepPath, SOURCE_PACKAGES, type EmojiSet } from '../build/mini/sources.ts';
import { extractTarGz, readTar } from '../build/mini/tar.ts';
import { f16ToF32, openSafetensors } from '../core/io/safetensors.ts';

// ---------------------------------------------------------------- synthetic sources in the real layout

const EMOJI_JSON = [
  {
    name: 'RED APPLE', unified: '1F34E', image: '1f34e.png', short_name: 'apple', short_names: ['apple', 'red_apple'],
    category: 'Food & Drink', subcategory: 'food-fruit', sort_order: 3, has_img_google: true, has_img_twitter: true,
  },
  {
    name: 'DOG FACE', unified: '1F436', image: '1f436.png', short_name: 'dog', short_names: ['dog'],
    category: 'Animals & Nature', subcategory: 'animal-mammal', sort_order: 1, has_img_google: true, has_img_twitter: true,
  },
  {
    name: 'WAVING HAND SIGN', unified: '1F44B', image: '1f44b.png', short_name: 'wave', short_names: ['wave'],
    category: 'People & Body', subcategory: 'hand-fingers-open', sort_order: 2, has_img_google: true, has_img_twitter: true,
    skin_variations: {
      '1F3FD': { unified: '1F44B-1F3FD', image: '1f44b-1f3fd.png', has_img_google: true, has_img_twitter: true },
    },
  },
  {
    // No Google image: must be skipped for that set.
    name: 'AUTOMOBILE', unified: '1F697', image: '1f697.png', short_name: 'car', short_names: ['car', 'red_car'],
    category: 'Travel & Places', subcategory: 'transport-ground', sort_order: 4, has_img_google: false, has_img_twitter: true,
  },
];

/** Deterministic bytes. */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s >>> 24;
  };
}

/** 64x64 RGBA with random colours and alphas, one fully transparent and one opaque black 2x2 block. */
function rgbaImage(seed: number): Uint8Array {
  const r = rng(seed);
  const px = new Uint8Array(64 * 64 * 4);
  for (let i = 0; i < px.length; i++) px[i] = r();
  for (let p = 0; p < 64 * 64; p++) {
    const pick = r() % 4; // a quarter each: alpha 0, 255, random, random
    if (pick === 0) px[p * 4 + 3] = 0;
    if (pick === 1) px[p * 4 + 3] = 255;
  }
  for (const [x, y] of [[0, 0], [1, 0], [0, 1], [1, 1]]) px[(y * 64 + x) * 4 + 3] = 0;
  for (const [x, y] of [[2, 0], [3, 0], [2, 1], [3, 1]]) px.set([0, 0, 0, 255], (y * 64 + x) * 4);
  return px;
}

/**
 * A 4-bit palette PNG (as many Twemoji files are), and the RGBA it stands for;
 * same white and black blocks as rgbaImage. (fast-png's encoder writes tRNS
 * right only when the translucent entries come first, as PNG optimisers order them.)
 */
function paletteImage(seed: number): { png: Uint8Array; rgba: Uint8Array } {
  const r = rng(seed);
  const palette = Array.from({ length: 16 }, (_, i) => [r(), r(), r(), i === 0 ? 0 : i < 10 ? r() % 255 : 255]);
  palette[15] = [0, 0, 0, 255];
  const index = Array.from({ length: 64 * 64 }, () => r() % 16);
  for (const [x, y] of [[0, 0], [1, 0], [0, 1], [1, 1]]) index[y * 64 + x] = 0;
  for (const [x, y] of [[2, 0], [3, 0], [2, 1], [3, 1]]) index[y * 64 + x] = 15;
  const packed = new Uint8Array(32 * 64);
  index.forEach((v, p) => (packed[p >> 1] |= p % 2 === 0 ? v << 4 : v));
  const rgba = new Uint8Array(64 * 64 * 4);
  index.forEach((v, p) => rgba.set(palette[v], p * 4));
  return { png: encode({ width: 64, height: 64, data: packed, channels: 1, depth: 4, palette }), rgba };
}

/** Expected [3,32,32] in [-1,1], computed directly: composite over white, 2x2 mean. */
function expected(rgba: Uint8Array): Float32Array {
  const out = new Float32Array(3 * 32 * 32);
  for (let c = 0; c < 3; c++) {
    for (let y = 0; y < 32; y++) {
      for (let x = 0; x < 32; x++) {
        let sum = 0;
        for (const [dx, dy] of [[0, 0], [1, 0], [0, 1], [1, 1]]) {
          const p = ((2 * y + dy) * 64 + 2 * x + dx) * 4;
          const a = rgba[p + 3] / 255;
          sum += (rgba[p + c] / 255) * a + (1 - a);
        }
        out[(c * 32 + y) * 32 + x] = (sum / 4) * 2 - 1;
      }
    }
  }
  return out;
}

let tmp: string;
/** unified → RGBA per set, for the images written. */
const pixels: Record<EmojiSet, Map<string, Uint8Array>> = { google: new Map(), twitter: new Map() };

function writeSourceTree(dir: string, set: EmojiSet): void {
  const img = path.join(dir, 'package', 'img', set, '64');
  mkdirSync(img, { recursive: true });
  writeFileSync(path.join(dir, 'package', 'emoji.json'), JSON.stringify(EMOJI_JSON));
  writeFileSync(path.join(dir, 'package', 'LICENSE'), 'The MIT License (MIT)\n\nCopyright (c) 2013 Cal Henderson\n');
  let seed = set === 'google' ? 100 : 200;
  const files: [string, string, boolean][] = [
    ['1F34E', '1f34e.png', set === 'google'], // the Twitter apple file is missing although has_img_twitter is true
    ['1F436', '1f436.png', true],
    ['1F44B', '1f44b.png', true],
    ['1F44B-1F3FD', '1f44b-1f3fd.png', true],
    ['1F697', '1f697.png', set === 'twitter'],
  ];
  for (const [unified, file, present] of files) {
    if (!present) continue;
    if (set === 'twitter' && unified === '1F436') {
      const { png, rgba } = paletteImage(seed++);
      writeFileSync(path.join(img, file), png);
      pixels[set].set(unified, rgba);
    } else {
      const rgba = rgbaImage(seed++);
      writeFileSync(path.join(img, file), encode({ width: 64, height: 64, data: rgba, channels: 4, depth: 8 }));
      pixels[set].set(unified, rgba);
    }
  }
}

const sources = (): Record<EmojiSet, string> => ({
  google: path.join(tmp, 'src', 'google', 'package'),
  twitter: path.join(tmp, 'src', 'twitter', 'package'),
});

let result: BuildResult;
let index: DatasetIndex;
let out: string;

beforeAll(async () => {
  tmp = mkdtempSync(path.join(os.tmpdir(), 'lethe-mini-'));
  writeSourceTree(path.join(tmp, 'src', 'google'), 'google');
  writeSourceTree(path.join(tmp, 'src', 'twitter'), 'twitter');
  out = path.join(tmp, 'out');
  result = await buildDataset({ out, sources: sources(), batchSize: 3, threads: 1 });
  index = JSON.parse(readFileSync(path.join(out, 'index.json'), 'utf8')) as DatasetIndex;
});

afterAll(() => {
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

// ---------------------------------------------------------------- tests

describe('lethe-mini dataset builder', () => {
  it('keeps the images a set has, skips the others, and orders them by emoji order with variants after their base', () => {
    const rows = index.images.map((i) => `${i.set}/${i.unified}`);
    expect(rows).toEqual([
      'google/1F436', 'google/1F44B', 'google/1F44B-1F3FD', 'google/1F34E',
      'twitter/1F436', 'twitter/1F44B', 'twitter/1F44B-1F3FD', 'twitter/1F697',
    ]);
    expect(index.images.map((i) => i.id)).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
    expect(index.counts.perSet).toEqual({ google: 4, twitter: 4 });
    expect(index.skipped).toEqual([
      { set: 'google', unified: '1F697', name: 'automobile', reason: 'no google image' },
      { set: 'twitter', unified: '1F34E', name: 'red apple', reason: 'image file img/twitter/64/1f34e.png missing' },
    ]);
  });

  it('composites onto white and box-downscales in the graph exactly as the direct computation does', () => {
    const st = openSafetensors(path.join(out, 'images.f16.safetensors'));
    try {
      const info = st.info('images');
      expect(info.dtype).toBe('F16');
      expect(info.shape).toEqual([index.images.length, 3, 32, 32]);
      expect(st.metadata.count).toBe(String(index.images.length));
      const all = st.readAsFloat32('images');
      let worst = 0;
      for (const img of index.images) {
        const want = expected(pixels[img.set].get(img.unified)!);
        const got = all.subarray(img.id * 3072, (img.id + 1) * 3072);
        for (let k = 0; k < 3072; k++) worst = Math.max(worst, Math.abs(got[k] - want[k]));
        // the transparent block is white, the opaque black block is black
        for (let c = 0; c < 3; c++) {
          expect(got[c * 1024]).toBe(1);
          expect(got[c * 1024 + 1]).toBe(-1);
        }
      }
      expect(worst).toBeLessThan(6e-4); // float16 rounding (half a step at 1 is 2^-11)
      expect(Math.min(...all)).toBeGreaterThanOrEqual(-1);
      expect(Math.max(...all)).toBeLessThanOrEqual(1);
    } finally {
      st.close();
    }
  });

  it('decodes palette PNGs with packed 4-bit indices and tRNS alpha', () => {
    const { png, rgba } = paletteImage(7);
    const got = pngToRgba(png);
    expect(got.width).toBe(64);
    expect(Buffer.from(got.rgba).equals(Buffer.from(rgba))).toBe(true);
  });

  it('names, categories, skin tones and captions', () => {
    const wave = index.images.find((i) => i.set === 'google' && i.unified === '1F44B-1F3FD')!;
    expect(wave).toMatchObject({
      name: 'waving hand sign: medium skin tone',
      skinTone: 'medium skin tone',
      concept: '1F44B',
      category: 'People & Body',
      subcategory: 'hand-fingers-open',
    });
    expect(wave.captions).toEqual([
      'an emoji of a waving hand sign, medium skin tone',
      'waving hand sign: medium skin tone',
      'a waving hand sign icon, medium skin tone',
      'an emoji of a wave, medium skin tone',
      'wave: medium skin tone',
      'a wave icon, medium skin tone',
    ]);
    const apple = index.images.find((i) => i.unified === '1F34E')!;
    expect(apple).toMatchObject({ name: 'red apple', skinTone: null, category: 'Food & Drink', subcategory: 'food-fruit' });
    // "red_apple" is the name again: no repeats
    expect(apple.captions).toEqual(['an emoji of a red apple', 'red apple', 'a red apple icon', 'an emoji of an apple', 'apple', 'an apple icon']);
    const car = index.images.find((i) => i.unified === '1F697')!;
    expect(car.subcategory).toBe('transport-ground');
    expect(car.captions).toContain('a red car icon');
    for (const img of index.images) {
      expect(new Set(img.captions).size).toBe(img.captions.length);
      for (const c of img.captions) expect(c).toBe(c.toLowerCase());
    }
    const dog = index.images.find((i) => i.unified === '1F436')!;
    expect(dog).toMatchObject({ category: 'Animals & Nature', subcategory: 'animal-mammal', skinTone: null });
  });

  it('lists concepts (base emoji across sets) and the category tree', () => {
    expect(index.concepts.map((c) => [c.id, c.name, c.category, c.subcategory, c.sets.join(',')])).toEqual([
      ['1F436', 'dog face', 'Animals & Nature', 'animal-mammal', 'google,twitter'],
      ['1F44B', 'waving hand sign', 'People & Body', 'hand-fingers-open', 'google,twitter'],
      ['1F34E', 'red apple', 'Food & Drink', 'food-fruit', 'google'],
      ['1F697', 'automobile', 'Travel & Places', 'transport-ground', 'twitter'],
    ]);
    const wave = index.concepts.find((c) => c.id === '1F44B')!;
    expect(wave.imageIds).toEqual([1, 2, 5, 6]);
    expect(wave.skinToneVariants).toBe(2);
    expect(index.counts).toMatchObject({ images: 8, skinToneImages: 2, concepts: 4, categories: 4, subcategories: 4 });
    expect(index.categories.find((c) => c.name === 'People & Body')).toEqual({
      name: 'People & Body', concepts: 1, images: 4, subcategories: [{ name: 'hand-fingers-open', concepts: 1, images: 4 }],
    });
    expect(index.tensor).toMatchObject({ file: 'images.f16.safetensors', name: 'images', dtype: 'float16', shape: [8, 3, 32, 32], range: [-1, 1] });
  });

  it('writes the licences with the Twemoji attribution, and preview grids', () => {
    const lic = readFileSync(path.join(out, 'LICENSES.md'), 'utf8');
    expect(lic).toContain('Apache License 2.0');
    expect(lic).toContain('Noto Emoji');
    expect(lic).toContain('CC-BY 4.0');
    expect(lic).toContain('https://creativecommons.org/licenses/by/4.0/');
    expect(lic).toContain(TWEMOJI_ATTRIBUTION);
    expect(lic).toContain('Copyright (c) 2013 Cal Henderson');
    expect(lic).toMatch(/composited onto a white background/);

    const grid = decode(readFileSync(path.join(out, 'preview-google.png')));
    expect([grid.width, grid.height, grid.channels]).toEqual([512, 32, 3]);
    // tile 0 is the first Google image; its pixel (0,0) is the transparent block (white), (1,0) the black one
    const px = (x: number, y: number): number[] => Array.from(grid.data.subarray((y * 512 + x) * 3, (y * 512 + x) * 3 + 3));
    expect(px(0, 0)).toEqual([255, 255, 255]);
    expect(px(1, 0)).toEqual([0, 0, 0]);
    const want = expected(pixels.google.get('1F436')!);
    const at = (c: number, x: number, y: number): number => Math.round(((want[(c * 32 + y) * 32 + x] + 1) / 2) * 255);
    expect(px(5, 7)).toEqual([at(0, 5, 7), at(1, 5, 7), at(2, 5, 7)]);
    expect(px(32 * 4, 0)).toEqual([255, 255, 255]); // past the 4 images: background
    expect(existsSync(path.join(out, 'preview-twitter.png'))).toBe(true);
    expect(result.files['images.f16.safetensors']).toBeGreaterThan(8 * 3072 * 2);
  });

  it('resumes from its per-set parts and writes the same tensor', async () => {
    const before = readFileSync(path.join(out, 'images.f16.safetensors'));
    const again = await buildDataset({ out, sources: sources(), threads: 1 });
    expect(again.reused).toEqual(['google', 'twitter']);
    expect(readFileSync(path.join(out, 'images.f16.safetensors')).equals(before)).toBe(true);
    const limited = await buildDataset({ out: path.join(tmp, 'out-limited'), sources: sources(), sets: ['twitter'], limit: 2, threads: 1 });
    writeFileSync(path.join(tmp, 'out-limited', 'preview-google.png'), 'stale');
    await buildDataset({ out: path.join(tmp, 'out-limited'), sources: sources(), sets: ['twitter'], limit: 2, threads: 1 });
    expect(readdirSync(path.join(tmp, 'out-limited')).filter((f) => f.startsWith('preview-'))).toEqual(['preview-twitter.png']);
    expect(limited.reused).toEqual([]);
    expect(limited.index.images.map((i) => i.unified)).toEqual(['1F436', '1F44B']);
    const st = openSafetensors(path.join(tmp, 'out-limited', 'images.f16.safetensors'));
    const rows = f16ToF32(st.read('images') as Uint16Array);
    st.close();
    const full = openSafetensors(path.join(out, 'images.f16.safetensors'));
    const twitterDog = full.readAsFloat32('images').subarray(4 * 3072, 5 * 3072);
    full.close();
    expect(Array.from(rows.subarray(0, 3072))).toEqual(Array.from(twitterDog));
  });
});

describe('emoji metadata', () => {
  it('names skin tones as CLDR does, for one and two people', () => {
    expect(skinToneName('1F3FB')).toBe('light skin tone');
    expect(skinToneName('1F3FE')).toBe('medium-dark skin tone');
    expect(skinToneName('1F3FB-1F3FF')).toBe('light skin tone, dark skin tone');
    expect(skinToneName('1F3FC-1F3FC')).toBe('medium-light skin tone');
    expect(withTone('waving hand', 'medium skin tone')).toBe('waving hand: medium skin tone');
    expect(withTone('kiss: man, man', 'dark skin tone')).toBe('kiss: man, man, dark skin tone');
    expect(() => skinToneName('1F600')).toThrow(/unknown skin tone/);
  });

  it('captions use the three templates, lower case, without repeats', () => {
    expect(captionsFor(['OCTOPUS', 'octopus'], null)).toEqual(['an emoji of an octopus', 'octopus', 'an octopus icon']);
    expect(captionsFor(['Egypt Flag', 'flag-eg'], null)).toEqual([
      'an emoji of an egypt flag', 'egypt flag', 'an egypt flag icon', 'an emoji of a flag-eg', 'flag-eg', 'a flag-eg icon',
    ]);
  });

  it('flags skin-tone variants and skips variants without an image', () => {
    const json = [
      {
        name: 'THUMBS UP SIGN', unified: '1F44D', image: '1f44d.png', short_names: ['+1', 'thumbsup'], category: 'People & Body', subcategory: 'hand-fingers-closed',
        has_img_google: true, has_img_twitter: true,
        skin_variations: {
          '1F3FB': { unified: '1F44D-1F3FB', image: '1f44d-1f3fb.png', has_img_google: true, has_img_twitter: false },
        },
      },
    ];
    const g = emojiImages(json, 'google');
    expect(g.images.map((i) => [i.name, i.skinTone])).toEqual([['thumbs up sign', null], ['thumbs up sign: light skin tone', 'light skin tone']]);
    const t = emojiImages(json, 'twitter');
    expect(t.images.map((i) => i.unified)).toEqual(['1F44D']);
    expect(t.skipped).toEqual([{ unified: '1F44D-1F3FB', name: 'thumbs up sign: light skin tone', reason: 'no twitter image' }]);
  });
});

// ---------------------------------------------------------------- sources: tar, cache, fetch

/** A ustar archive (with one pax path record) of the given files. */
function tarOf(files: [string, Uint8Array][], paxFor?: string): Uint8Array {
  const blocks: Uint8Array[] = [];
  const header = (name: string, size: number, type: string): Uint8Array => {
    const h = new Uint8Array(512);
    const put = (s: string, at: number, len: number): void => h.set(Buffer.from(s, 'utf8').subarray(0, len), at);
    put(name, 0, 100);
    put('0000644\0', 100, 8);
    put('0000000\0', 108, 8);
    put('0000000\0', 116, 8);
    put(`${size.toString(8).padStart(11, '0')}\0`, 124, 12);
    put('00000000000\0', 136, 12);
    put(type, 156, 1);
    put('ustar\0', 257, 6);
    put('00', 263, 2);
    h.fill(0x20, 148, 156);
    const sum = h.reduce((s, b) => s + b, 0);
    put(`${sum.toString(8).padStart(6, '0')}\0 `, 148, 8);
    return h;
  };
  const pad = (n: number): Uint8Array => new Uint8Array((512 - (n % 512)) % 512);
  for (const [name, data] of files) {
    if (name === paxFor) {
      const body = ` path=${name}\n`;
      let len = body.length + 1;
      while (String(len).length + body.length !== len) len = String(len).length + body.length;
      const rec = Buffer.from(`${len}${body}`);
      blocks.push(header('PaxHeader/x', rec.length, 'x'), rec, pad(rec.length));
      blocks.push(header('truncated-name-ignored', data.length, '0'), data, pad(data.length));
    } else {
      blocks.push(header(name, data.length, '0'), data, pad(data.length));
    }
  }
  blocks.push(new Uint8Array(1024));
  return Buffer.concat(blocks);
}

describe('emoji sources', () => {
  it('reads tar archives (ustar, pax paths) and extracts only the kept paths', () => {
    const png = encode({ width: 64, height: 64, data: rgbaImage(1), channels: 4, depth: 8 });
    const tar = tarOf(
      [
        ['package/emoji.json', Buffer.from('[]')],
        ['package/img/google/64/1f436.png', png],
        ['package/img/google/sheets/64.png', png],
        ['package/img/google/64/1f44b-1f3fd-long-name.png', png],
      ],
      'package/img/google/64/1f44b-1f3fd-long-name.png',
    );
    expect([...readTar(tar)].map((e) => e.path)).toEqual([
      'package/emoji.json', 'package/img/google/64/1f436.png', 'package/img/google/sheets/64.png', 'package/img/google/64/1f44b-1f3fd-long-name.png',
    ]);
    const file = path.join(tmp, 'x.tgz');
    writeFileSync(file, gzipSync(tar));
    const dest = path.join(tmp, 'x');
    expect(extractTarGz(file, dest, (p) => keepPath('google', p))).toBe(3);
    expect(readdirSync(path.join(dest, 'package', 'img', 'google', '64')).sort()).toEqual(['1f436.png', '1f44b-1f3fd-long-name.png']);
    expect(existsSync(path.join(dest, 'package', 'img', 'google', 'sheets'))).toBe(false);

    writeFileSync(file, gzipSync(tarOf([['../evil.png', png]])));
    expect(() => extractTarGz(file, dest, () => true)).toThrow(/unsafe path/);
    const corrupt = tarOf([['package/emoji.json', Buffer.from('[]')]]);
    corrupt[10] ^= 1;
    expect(() => [...readTar(corrupt)]).toThrow(/checksum/);
  });

  it('rejects a fetched tarball that does not match the pinned integrity', async () => {
    const cacheDir = path.join(tmp, 'cache-bad');
    let asked = '';
    const pack = async (spec: string, dest: string): Promise<string> => {
      asked = spec;
      const f = path.join(dest, 'fake.tgz');
      writeFileSync(f, gzipSync(tarOf([['package/emoji.json', Buffer.from('[]')]])));
      return f;
    };
    await expect(ensureSource('google', { cacheDir, pack })).rejects.toThrow(/does not match the pinned/);
    expect(asked).toBe(`emoji-datasource-google@${SOURCE_PACKAGES.google.version}`);
    expect(readdirSync(cacheDir)).toEqual([]);
  });

  it('uses an extracted cache without fetching, from the CLI too', () => {
    const cacheDir = path.join(tmp, 'cache');
    const tree = path.join(cacheDir, `${SOURCE_PACKAGES.google.name}-${SOURCE_PACKAGES.google.version}`);
    writeSourceTree(tree, 'google');
    writeFileSync(path.join(tree, '.complete'), 'test\n');
    const cliOut = path.join(tmp, 'cli-out');
    const tsx = path.join(process.cwd(), 'node_modules', '.bin', process.platform === 'win32' ? 'tsx.cmd' : 'tsx');
    const stdout = execFileSync(tsx, ['build/mini/dataset.ts', '--out', cliOut, '--sets', 'google', '--limit', '3', '--cache', cacheDir], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, npm_config_registry: 'http://127.0.0.1:9' }, // any fetch would fail
    });
    expect(stdout).toMatch(/images: 3 \(google 3;/);
    expect(stdout).toMatch(/time: [\d.]+ s/);
    const idx = JSON.parse(readFileSync(path.join(cliOut, 'index.json'), 'utf8')) as DatasetIndex;
    expect(idx.images.map((i) => i.unified)).toEqual(['1F436', '1F44B', '1F44B-1F3FD']);
    expect(parseCli(['--sets', 'google,twitter', '--limit', '5'])).toMatchObject({ sets: ['google', 'twitter'], limit: 5 });
    expect(() => parseCli(['--limit', 'x'])).toThrow(/positive integer/);
    expect(() => parseCli(['--bogus'])).toThrow();
  });
});
