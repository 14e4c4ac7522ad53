/**
 * The lethe-mini training data in memory: the dataset's images as float32
 * NCHW in [-1, 1], its captions as token ids, and seeded batch samplers whose
 * draws depend only on (seed, step), so a resumed run sees the same batches.
 */
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { FileFormatError } from '../../core/errors.ts';
import { openSafetensors } from '../../core/io/safetensors.ts';
import type { ClipTokenizer } from '../../core/text/clip-tokenizer.ts';
import { captionsFor } from './emoji-meta.ts';
import { FORMAT, IMAGES_FILE, INDEX_FILE, type DatasetIndex } from './dataset.ts';

export const IMAGE_SIZE = 32;
export const IMAGE_VALUES = 3 * IMAGE_SIZE * IMAGE_SIZE;

export interface MiniDataset {
  index: DatasetIndex;
  /** [N, 3, 32, 32] in [-1, 1]. */
  images: Float32Array;
  count: number;
  /** Concept position (in index.concepts) of every image. */
  conceptOf: Int32Array;
}

export function loadDataset(dir: string): MiniDataset {
  const indexPath = path.join(dir, INDEX_FILE);
  let index: DatasetIndex;
  try {
    index = JSON.parse(readFileSync(indexPath, 'utf8')) as DatasetIndex;
  } catch (e) {
    throw new FileFormatError(indexPath, `cannot read the lethe-mini dataset index ${indexPath} (${(e as Error).message}); build it with \`npm run mini:dataset\``);
  }
  if (index.format !== FORMAT) throw new FileFormatError(indexPath, `${indexPath} is format ${index.format}, expected ${FORMAT}; rebuild it with \`npm run mini:dataset\``);
  const file = openSafetensors(path.join(dir, IMAGES_FILE));
  try {
    const images = file.readAsFloat32(index.tensor.name);
    const count = index.images.length;
    if (images.length !== count * IMAGE_VALUES) throw new FileFormatError(file.path, `${file.path} holds ${images.length / IMAGE_VALUES} images, the index lists ${count}`);
    const position = new Map(index.concepts.map((c, i) => [c.id, i]));
    const conceptOf = Int32Array.from(index.images, (im) => position.get(im.concept) ?? -1);
    return { index, images, count, conceptOf };
  } finally {
    file.close();
  }
}

/** A small fast PRNG (mulberry32) for batch sampling; seeded per step. */
export function stepRng(seed: number, step: number): () => number {
  let a = (Math.imul(seed ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul(step + 1, 0xc2b2ae35)) >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** `k` distinct integers from [0, n), in random order. */
export function sampleDistinct(rand: () => number, n: number, k: number): number[] {
  const picked = new Set<number>();
  while (picked.size < k) picked.add(Math.floor(rand() * n));
  return [...picked];
}

/** Copies images `ids` into one [B, 3, 32, 32] batch. */
export function gatherImages(data: MiniDataset, ids: readonly number[], into = new Float32Array(ids.length * IMAGE_VALUES)): Float32Array {
  ids.forEach((id, i) => into.set(data.images.subarray(id * IMAGE_VALUES, (id + 1) * IMAGE_VALUES), i * IMAGE_VALUES));
  return into;
}

/** Token ids of `texts`, each padded to `length`, as the int64 batch the text tower takes. */
export function encodeBatch(tokenizer: ClipTokenizer, texts: readonly string[], length: number): BigInt64Array {
  const out = new BigInt64Array(texts.length * length);
  texts.forEach((t, i) => {
    const { ids } = tokenizer.encodeForModel(t, length);
    for (let j = 0; j < length; j++) out[i * length + j] = BigInt(ids[j]);
  });
  return out;
}

/** Every caption in the dataset, for training the tokenizer. */
export function allCaptions(index: DatasetIndex): string[] {
  return index.images.flatMap((im) => im.captions);
}

/** The zero-shot prompt of a concept: its first caption ("an emoji of a …"). */
export function conceptPrompt(name: string): string {
  return captionsFor([name], null)[0];
}
