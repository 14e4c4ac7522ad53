/**
 * Emoji PNGs → training pixels. Decoding the files is JS (fast-png); all the
 * tensor math (layout, alpha composite onto white, 2x2 box downscale, range
 * mapping, preview bytes) runs in one small onnxruntime graph per batch.
 */
import { decode } from 'fast-png';
import * as F from '../../core/graph/functional.ts';
import { Graph, type Tensor } from '../../core/graph/graph.ts';
import { emitOnnx } from '../../core/graph/onnx.ts';
import { Session } from '../../core/runtime/session.ts';

export const SOURCE_SIZE = 64;
export const TARGET_SIZE = 32;

/**
 * Decoded PNG as 8-bit RGBA, row-major. Palette (any bit depth, with or
 * without tRNS), grey, grey+alpha, RGB and RGBA at 8 or 16 bits are handled.
 */
export function pngToRgba(bytes: Uint8Array, what = 'png'): { width: number; height: number; rgba: Uint8Array } {
  const png = decode(bytes);
  const { width, height, channels, depth } = png;
  const n = width * height;
  if (channels === 4 && depth === 8) return { width, height, rgba: png.data as Uint8Array };
  const out = new Uint8Array(n * 4);
  if (png.palette) {
    const pal = png.palette;
    const stride = Math.ceil((width * depth) / 8);
    const mask = (1 << depth) - 1;
    for (let y = 0; y < height; y++) {
      for (let x = 0; x < width; x++) {
        const bit = x * depth;
        const index = (png.data[y * stride + (bit >> 3)] >> (8 - depth - (bit & 7))) & mask;
        const c = pal[index];
        if (!c) throw new Error(`${what}: palette index ${index} out of range (${pal.length} colours)`);
        const o = (y * width + x) * 4;
        out[o] = c[0];
        out[o + 1] = c[1];
        out[o + 2] = c[2];
        out[o + 3] = c.length > 3 ? c[3] : 255;
      }
    }
    return { width, height, rgba: out };
  }
  if (depth < 8 && channels !== 1) throw new Error(`${what}: unsupported PNG (${channels} channels at ${depth} bits)`);
  const max = (1 << depth) - 1;
  const key = png.transparency;
  const sample = (p: number, c: number): number => {
    if (depth >= 8) return png.data[p * channels + c];
    const stride = Math.ceil((width * depth) / 8);
    const y = Math.floor(p / width);
    const bit = (p % width) * depth;
    return (png.data[y * stride + (bit >> 3)] >> (8 - depth - (bit & 7))) & max;
  };
  const to8 = (v: number): number => (depth === 16 ? v >> 8 : depth === 8 ? v : Math.round((v * 255) / max));
  for (let p = 0; p < n; p++) {
    const o = p * 4;
    if (channels === 1 || channels === 2) {
      const g = sample(p, 0);
      out[o] = out[o + 1] = out[o + 2] = to8(g);
      out[o + 3] = channels === 2 ? to8(sample(p, 1)) : key && key.length >= 1 && g === key[0] ? 0 : 255;
    } else if (channels === 3 || channels === 4) {
      const r = sample(p, 0);
      const g = sample(p, 1);
      const b = sample(p, 2);
      out[o] = to8(r);
      out[o + 1] = to8(g);
      out[o + 2] = to8(b);
      out[o + 3] = channels === 4 ? to8(sample(p, 3)) : key && key.length >= 3 && r === key[0] && g === key[1] && b === key[2] ? 0 : 255;
    } else {
      throw new Error(`${what}: unsupported PNG with ${channels} channels`);
    }
  }
  return { width, height, rgba: out };
}

/**
 * x: [N,4,H,W] RGBA in [0,1] → [N,3,H/2,W/2] in [0,1]: composited over
 * white (c·a + 1·(1−a) = 1 − a·(1 − c)), then each 2x2 block averaged.
 */
export function compositeDownscale(x: Tensor): Tensor {
  const [n, c, h, w] = x.shape;
  if (x.rank !== 4 || c !== 4 || h % 2 || w % 2) throw new Error(`compositeDownscale: expected [N,4,H,W] with even H, W, got [${x.shape.join(',')}]`);
  const rgb = F.slice(x, [1], [0], [3]);
  const alpha = F.slice(x, [1], [3], [4]);
  const onWhite = F.sub(1, F.mul(alpha, F.sub(1, rgb)));
  const blocks = F.reshape(onWhite, [n, 3, h / 2, 2, w / 2, 2]);
  return F.reduceMean(blocks, [3, 5]);
}

/**
 * The batch graph: `rgba` uint8 [N,64,64,4] (PNG byte order) → `images`
 * float32 [N,3,32,32] in [-1,1] and `preview` uint8 [N,32,32,3].
 */
export function buildPixelGraph(batch: number, size = SOURCE_SIZE): { images: Tensor; preview: Tensor } {
  const g = new Graph();
  const bytes = g.input('rgba', [batch, size, size, 4], 'uint8');
  const x = F.transpose(F.div(F.cast(bytes, 'float32'), 255), [0, 3, 1, 2]); // [N,4,64,64] in [0,1]
  const y = compositeDownscale(x); // [N,3,32,32] in [0,1]
  const images = F.sub(F.mul(y, 2), 1);
  const preview = F.cast(F.clip(F.add(F.mul(F.transpose(y, [0, 2, 3, 1]), 255), 0.5), 0, 255), 'uint8');
  return { images, preview };
}

/** A compiled pixel graph for a fixed batch size; shorter batches are zero-padded. */
export class PixelPipeline {
  private constructor(
    private readonly session: Session,
    readonly batch: number,
    private readonly input: Uint8Array,
  ) {}

  static async create(batch: number, threads?: number): Promise<PixelPipeline> {
    const { images, preview } = buildPixelGraph(batch);
    const session = await Session.create(emitOnnx({ images, preview }, 'lethe_mini_pixels'), { provider: 'cpu', ...(threads ? { threads } : {}) });
    return new PixelPipeline(session, batch, new Uint8Array(batch * SOURCE_SIZE * SOURCE_SIZE * 4));
  }

  /** Writes image `i` (64x64 RGBA bytes) into the pending batch. */
  set(i: number, rgba: Uint8Array): void {
    this.input.set(rgba, i * SOURCE_SIZE * SOURCE_SIZE * 4);
  }

  /** Runs the first `count` images of the pending batch. */
  async run(count: number): Promise<{ images: Float32Array; preview: Uint8Array }> {
    const px = SOURCE_SIZE * SOURCE_SIZE * 4;
    this.input.fill(0, count * px);
    const out = await this.session.run({ rgba: this.input });
    const per = 3 * TARGET_SIZE * TARGET_SIZE;
    return {
      images: (out.images.data as Float32Array).slice(0, count * per),
      preview: (out.preview.data as Uint8Array).slice(0, count * per),
    };
  }

  async release(): Promise<void> {
    await this.session.release();
  }
}
