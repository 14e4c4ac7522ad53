/**
 * A small dataset in the lethe-mini dataset format (index.json +
 * images.f16.safetensors + LICENSES.md): `categories` x `perCategory`
 * concepts, two images each, every concept a differently coloured square at
 * a concept-specific place, so the models have something learnable.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { f32ToF16, writeSafetensors } from '../../core/io/safetensors.ts';
import { FORMAT, IMAGES_FILE, INDEX_FILE, type DatasetIndex, type IndexConcept, type IndexImage } from '../../build/mini/dataset.ts';
import { captionsFor } from '../../build/mini/emoji-meta.ts';

const NAMES = ['red apple', 'blue car', 'green tree', 'yellow star', 'purple grape', 'orange fish', 'black cat', 'white cloud', 'pink heart', 'brown bear', 'gray rock', 'teal wave'];

export function writeSyntheticMiniDataset(dir: string, categories = 3, perCategory = 3): DatasetIndex {
  mkdirSync(dir, { recursive: true });
  const images: IndexImage[] = [];
  const concepts: IndexConcept[] = [];
  const pixels: number[] = [];
  let k = 0;
  for (let c = 0; c < categories; c++) {
    for (let j = 0; j < perCategory; j++, k++) {
      const name = NAMES[k % NAMES.length] + (k >= NAMES.length ? ` ${k}` : '');
      const id = `C${k}`;
      const imageIds: number[] = [];
      for (const set of ['google', 'twitter'] as const) {
        const at = images.length;
        imageIds.push(at);
        images.push({ id: at, set, unified: id, name, concept: id, shortNames: [], category: `category ${c}`, subcategory: `sub ${c}`, skinTone: null, captions: captionsFor([name], null) });
        pixels.push(...square(k, set === 'twitter' ? 1 : 0));
      }
      concepts.push({ id, name, shortNames: [], category: `category ${c}`, subcategory: `sub ${c}`, sets: ['google', 'twitter'], imageIds, skinToneVariants: 0 });
    }
  }
  writeSafetensors(path.join(dir, IMAGES_FILE), { images: { dtype: 'F16', shape: [images.length, 3, 32, 32], data: f32ToF16(Float32Array.from(pixels)) } });
  const index: DatasetIndex = {
    format: FORMAT,
    createdAt: '2026-01-01T00:00:00.000Z',
    sources: [{ set: 'google', package: 'synthetic', version: '0', integrity: 'sha512-synthetic' }],
    tensor: { file: IMAGES_FILE, name: 'images', dtype: 'float16', shape: [images.length, 3, 32, 32], layout: 'NCHW', range: [-1, 1], background: 'white' },
    counts: { images: images.length, perSet: { google: images.length / 2, twitter: images.length / 2 }, skinToneImages: 0, concepts: concepts.length, categories, subcategories: categories },
    images,
    concepts,
    categories: Array.from({ length: categories }, (_, c) => ({ name: `category ${c}`, concepts: perCategory, images: 2 * perCategory, subcategories: [{ name: `sub ${c}`, concepts: perCategory, images: 2 * perCategory }] })),
    skipped: [],
  };
  writeFileSync(path.join(dir, INDEX_FILE), JSON.stringify(index));
  writeFileSync(path.join(dir, 'LICENSES.md'), '# synthetic test images\n');
  return index;
}

/** NCHW [3, 32, 32] in [-1, 1]: white, with a 10 px square of the concept's colour, shifted by `shift` px. */
function square(k: number, shift: number): number[] {
  const colour = [((k * 97) % 255) / 127.5 - 1, ((k * 53 + 80) % 255) / 127.5 - 1, ((k * 29 + 160) % 255) / 127.5 - 1];
  const x0 = 2 + ((k * 7) % 18) + shift;
  const y0 = 2 + ((k * 11) % 18);
  const out: number[] = [];
  for (let ch = 0; ch < 3; ch++) {
    for (let y = 0; y < 32; y++) for (let x = 0; x < 32; x++) out.push(x >= x0 && x < x0 + 10 && y >= y0 && y < y0 + 10 ? colour[ch] : 1);
  }
  return out;
}
