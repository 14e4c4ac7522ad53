import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { decode } from 'fast-png';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BUILT_IN_MODEL_DIR, loadModel } from '../core/diffusion/model.ts';
import { GenerationCancelled, InvalidRequestError, TextToImage } from '../core/diffusion/pipeline.ts';
import { formatParameters, parseParameters, readPngParameters } from '../core/diffusion/png.ts';
import { hasShared } from './helpers/shared.ts';
import { pipelineTokenizerDir, writeDiffusersFolder, writeSingleFile } from './helpers/model-dirs.ts';

const LETHE = fileURLToPath(new URL('../bin/lethe.js', import.meta.url));

describe.skipIf(!hasShared)('text to image from user checkpoints', () => {
  let tmp = '';
  let folder = '';
  let single = '';
  beforeAll(() => {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'lethe-generate-'));
    folder = writeDiffusersFolder(path.join(tmp, 'tiny-sd'));
    single = writeSingleFile(path.join(tmp, 'tiny-sd.safetensors'));
  });
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));

  const request = { prompts: ['a photo of a cat', 'a photo of a cat'], seeds: [7, 8], steps: 4, guidance: 7.5, width: 16, height: 16 };

  it('a single-file checkpoint and a diffusers folder of the same weights give identical images', async () => {
    const a = loadModel(folder);
    // Shapes do not tell head counts or norm groups; this small model differs from SD 1.x there.
    const configs = { unet: { attention_head_dim: 4, norm_num_groups: 8 }, textEncoder: { num_attention_heads: 4 }, vae: { norm_num_groups: 8 } };
    const b = loadModel(single, { tokenizerDir: pipelineTokenizerDir(), configs });
    expect(b.opened.layout).toBe('single-file');
    const [pa, pb] = [new TextToImage(a.parts, { provider: 'cpu' }), new TextToImage(b.parts, { provider: 'cpu' })];
    const [ra, rb] = [await pa.generate(request), await pb.generate(request)];
    expect(Buffer.from(rb.pixels).equals(Buffer.from(ra.pixels))).toBe(true);
    expect(Array.from(rb.latents)).toEqual(Array.from(ra.latents));
    // Different seeds give different images; the same seed gives the same image.
    const px = 16 * 16 * 3;
    expect(Buffer.from(ra.pixels.subarray(0, px)).equals(Buffer.from(ra.pixels.subarray(px)))).toBe(false);
    const again = await pa.generate({ ...request, prompts: ['a photo of a cat'], seeds: [8] });
    expect(Buffer.from(again.pixels).equals(Buffer.from(ra.pixels.subarray(px)))).toBe(true);
    await Promise.all([pa.release(), pb.release()]);
    a.opened.close();
    b.opened.close();
  });

  it('reports progress, can be cancelled between steps, and refuses bad requests with typed errors', async () => {
    const { opened, parts } = loadModel(folder);
    const pipe = new TextToImage(parts, { provider: 'cpu' });
    const seen: number[] = [];
    await pipe.generate({ ...request, steps: 3 }, { onProgress: (p) => seen.push(p.step) });
    expect(seen).toEqual([1, 2, 3]);
    const controller = new AbortController();
    const cancelled = await pipe
      .generate({ ...request, steps: 5 }, { signal: controller.signal, onProgress: (p) => p.step === 2 && controller.abort() })
      .catch((e: unknown) => e);
    expect(cancelled).toBeInstanceOf(GenerationCancelled);
    expect((cancelled as GenerationCancelled).atStep).toBe(2);
    await expect(pipe.generate({ ...request, width: 18 })).rejects.toThrow(InvalidRequestError);
    await expect(pipe.generate({ ...request, seeds: [1] })).rejects.toThrow(/one seed per image/);
    const long = await pipe.generate({ ...request, prompts: [Array(120).fill('cat').join(' '), 'dog'], steps: 1 });
    expect(long.warnings[0]).toMatch(/prompt too long: dropped ".*cat cat/);
    await pipe.release();
    opened.close();
  });

  it('lethe generate writes PNGs with AUTOMATIC1111-style parameters, matching the pipeline', async () => {
    const out = path.join(tmp, 'cat.png');
    const r = spawnSync(process.execPath, [LETHE, 'generate', '--model', folder, '--prompt', 'a photo of a cat', '--negative', 'blurry', '--seed', '7', '--steps', '4', '--size', '16x16', '--count', '2', '--out', out, '--provider', 'cpu'], { encoding: 'utf8' });
    expect(r.stderr).toMatch(/\[#+\] 4\/4/);
    expect(r.status).toBe(0);
    expect(r.stdout.trim().split('\n')).toEqual([path.join(tmp, 'cat-1.png'), path.join(tmp, 'cat-2.png')]);
    const png = readFileSync(path.join(tmp, 'cat-2.png'));
    const img = decode(png);
    expect([img.width, img.height, img.channels]).toEqual([16, 16, 3]);
    const params = parseParameters(readPngParameters(png)!);
    expect(params).toMatchObject({ prompt: 'a photo of a cat', negativePrompt: 'blurry', fields: { Steps: '4', Sampler: 'DDIM', 'CFG scale': '7.5', Seed: '8', Size: '16x16', Model: 'tiny-sd' } });
    const { opened, parts } = loadModel(folder);
    const pipe = new TextToImage(parts, { provider: 'cpu' });
    const direct = await pipe.generate({ prompts: ['a photo of a cat'], negativePrompt: 'blurry', seeds: [8], steps: 4, guidance: 7.5, width: 16, height: 16 });
    expect(Buffer.from(img.data as Uint8Array).equals(Buffer.from(direct.pixels))).toBe(true);
    await pipe.release();
    opened.close();
  });

  it('lethe generate explains a missing model or a bad size instead of crashing', () => {
    const missing = spawnSync(process.execPath, [LETHE, 'generate', '--model', path.join(tmp, 'nope'), '--prompt', 'x'], { encoding: 'utf8' });
    expect(missing.status).toBe(2);
    expect(missing.stderr).toMatch(/lethe: .*not found/);
    if (!existsSync(path.join(BUILT_IN_MODEL_DIR, 'model_index.json'))) {
      // Without --model the built-in lethe-mini is used; until it is built, say so.
      const none = spawnSync(process.execPath, [LETHE, 'generate', '--prompt', 'x'], { encoding: 'utf8' });
      expect(none.status).toBe(2);
      expect(none.stderr).toMatch(/pass --model .*lethe-mini .* is not built yet/);
    }
    const help = spawnSync(process.execPath, [LETHE, 'generate', '--help'], { encoding: 'utf8' });
    expect(help.status).toBe(0);
    expect(help.stdout).toMatch(/lethe generate \[--model <dir\|file>\] --prompt/);
    const unknown = spawnSync(process.execPath, [LETHE, 'generate', '--bogus'], { encoding: 'utf8' });
    expect(unknown.status).toBe(2);
    expect(unknown.stderr).toMatch(/lethe: Unknown option '--bogus'\nusage:/);
    const size = spawnSync(process.execPath, [LETHE, 'generate', '--model', folder, '--prompt', 'x', '--size', '17x16'], { encoding: 'utf8' });
    expect(size.status).toBe(2);
    expect(size.stderr).toMatch(/width 17 must be a positive multiple of 4/);
  });

  it('parameters text round-trips', () => {
    const text = formatParameters({ prompt: 'a\nb', negativePrompt: 'c', steps: 3, sampler: 'DDIM', guidance: 5, seed: 9, width: 8, height: 16 }, '0.1.0');
    expect(parseParameters(text)).toEqual({ prompt: 'a\nb', negativePrompt: 'c', fields: { Steps: '3', Sampler: 'DDIM', 'CFG scale': '5', Seed: '9', Size: '8x16', Version: 'Lethe 0.1.0' } });
  });
});
