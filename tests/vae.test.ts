import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileFormatError } from '../core/errors.ts';
import { openSafetensors, writeSafetensors, type TensorToWrite } from '../core/io/safetensors.ts';
import { ModelLoadError, prefixResolver } from '../core/nn/params.ts';
import { SD1_VAE_CONFIG, parseVaeConfig, withLegacyVaeAttentionNames, type VaeConfig } from '../core/nn/vae.ts';
import { compareOutputs, loadFixture, type FixtureCase } from '../core/parity/fixture.ts';
import { runVaeDecode, runVaeEncode, runVaeOnce } from '../core/parity/vae.ts';
import { f32, type HostTensor } from '../core/runtime/session.ts';
import { rng } from './helpers/gradcheck.ts';
import { FIXTURES_DIR, hasShared } from './helpers/shared.ts';

const maxAbsDiff = (a: ArrayLike<number | bigint>, b: ArrayLike<number | bigint>): number => {
  expect(a.length).toBe(b.length);
  return Array.from(a, (v, k) => Math.abs(Number(v) - Number(b[k]))).reduce((m, v) => Math.max(m, v), 0);
};

/** Deterministic values in [-1, 1). */
function noise(shape: number[], seed: number): HostTensor {
  const pick = rng(seed);
  return f32(shape, Float32Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => pick() * 2 - 1));
}

/** Element `i` of the batch of `t`. */
const item = (t: HostTensor, i: number): HostTensor => {
  const n = t.data.length / t.shape[0];
  return f32([1, ...t.shape.slice(1)], (t.data as Float32Array).subarray(i * n, (i + 1) * n));
};

describe('parseVaeConfig', () => {
  it('fills in the SD 1.x defaults', () => {
    expect(parseVaeConfig({})).toEqual(SD1_VAE_CONFIG);
    expect(parseVaeConfig({ _class_name: 'AutoencoderKL', block_out_channels: [64, 64], down_block_types: ['DownEncoderBlock2D', 'DownEncoderBlock2D'], up_block_types: ['UpDecoderBlock2D', 'UpDecoderBlock2D'] })).toMatchObject({ block_out_channels: [64, 64], norm_num_groups: 32 });
  });

  it('reports every bad value at once', () => {
    const bad = (): VaeConfig => parseVaeConfig({ act_fn: 'gelu', block_out_channels: [128, 100, 512, 512], up_block_types: ['AttnUpDecoderBlock2D'], layers_per_block: 0 }, 'vae/config.json');
    expect(bad).toThrow(FileFormatError);
    for (const part of [/^vae\/config\.json: /, /act_fn "gelu"/, /up_block_types \["AttnUpDecoderBlock2D"\] \(only UpDecoderBlock2D/, /layers_per_block 0/, /block_out_channels 100 do not split into 32/]) expect(bad).toThrow(part);
    expect(() => parseVaeConfig({ block_out_channels: [128, 256] })).toThrow(/4 down and 4 up block types for 2 block_out_channels/);
  });
});

describe.skipIf(!hasShared)('AutoencoderKL against the vae-decode and vae-encode vectors', () => {
  let dec: FixtureCase;
  let enc: FixtureCase;
  let cfg: VaeConfig;
  let weights: string;
  let scratch = '';
  beforeAll(() => {
    dec = loadFixture(path.join(FIXTURES_DIR, 'sd1', 'vae-decode'));
    enc = loadFixture(path.join(FIXTURES_DIR, 'sd1', 'vae-encode'));
    cfg = parseVaeConfig(dec.json.config);
    weights = dec.weightsPath();
    scratch = mkdtempSync(path.join(tmpdir(), 'lethe-vae-'));
  });
  afterAll(() => {
    if (scratch) rmSync(scratch, { recursive: true, force: true });
  });

  it('decodes z within tolerance', async () => {
    const reports = compareOutputs(dec, await runVaeDecode(dec));
    expect(reports.map((r) => r.name)).toEqual(['image']);
    for (const r of reports) expect(r, `${r.name}: worst ratio ${r.worstRatio}`).toMatchObject({ pass: true });
  });

  it('encodes to mean, logvar and std within tolerance, with the weights of vae-decode', async () => {
    expect(enc.weightsPath()).toBe(weights);
    const reports = compareOutputs(enc, await runVaeEncode(enc));
    expect(reports.map((r) => r.name).sort()).toEqual(['logvar', 'mean', 'std']);
    for (const r of reports) expect(r, `${r.name}: worst ratio ${r.worstRatio}`).toMatchObject({ pass: true });
  });

  it('decodes a batch of 2 non-square latents: 4x the size, each element as decoded alone', async () => {
    const z = noise([2, 4, 3, 5], 7);
    const both = await runVaeOnce(weights, cfg, 'decode', z);
    expect(both.image.shape).toEqual([2, 3, 12, 20]);
    for (let i = 0; i < 2; i++) {
      const one = await runVaeOnce(weights, cfg, 'decode', item(z, i));
      expect(one.image.shape).toEqual([1, 3, 12, 20]);
      expect(maxAbsDiff(one.image.data, item(both.image, i).data)).toBeLessThan(1e-5);
    }
  });

  it('encodes a batch of 2 non-square images: a quarter of the size, each element as encoded alone', async () => {
    const image = noise([2, 3, 16, 24], 11);
    const both = await runVaeOnce(weights, cfg, 'encode', image);
    for (const name of ['mean', 'logvar', 'std']) expect(both[name].shape).toEqual([2, 4, 4, 6]);
    for (let i = 0; i < 2; i++) {
      const one = await runVaeOnce(weights, cfg, 'encode', item(image, i));
      for (const name of ['mean', 'logvar', 'std']) expect(maxAbsDiff(one[name].data, item(both[name], i).data)).toBeLessThan(1e-5);
    }
  });

  it('encodes odd image sizes as PyTorch does: pad right and bottom by 1, then stride 2 (15x9 -> 7x4 -> 3x2)', async () => {
    const out = await runVaeOnce(weights, cfg, 'encode', noise([1, 3, 15, 9], 3));
    expect(out.mean.shape).toEqual([1, 4, 3, 2]);
  });

  it('reads the pre-0.14 attention names (query/key/value/proj_attn) through withLegacyVaeAttentionNames', async () => {
    const src = openSafetensors(weights);
    const legacy = path.join(scratch, 'legacy.safetensors');
    const rename = (k: string): string => k.replace('.to_q.', '.query.').replace('.to_k.', '.key.').replace('.to_v.', '.value.').replace('.to_out.0.', '.proj_attn.');
    try {
      writeSafetensors(legacy, [...src.tensors.keys()].map((k): [string, TensorToWrite] => [rename(k), { dtype: 'F32', shape: src.info(k).shape, data: src.readAsFloat32(k) }]));
    } finally {
      src.close();
    }
    const z = f32(dec.json.inputs.z.shape, dec.input('z') as Float32Array);
    const out = await runVaeOnce(legacy, cfg, 'decode', z, { resolver: (files) => withLegacyVaeAttentionNames(prefixResolver(files)) });
    expect(out.image.data).toEqual((await runVaeOnce(weights, cfg, 'decode', z)).image.data);
    const err = await runVaeOnce(legacy, cfg, 'decode', z).catch((e: unknown) => e);
    expect((err as ModelLoadError).missing).toEqual(['decoder.mid_block.attentions.0.to_q.weight', 'decoder.mid_block.attentions.0.to_q.bias', 'decoder.mid_block.attentions.0.to_k.weight', 'decoder.mid_block.attentions.0.to_k.bias', 'decoder.mid_block.attentions.0.to_v.weight', 'decoder.mid_block.attentions.0.to_v.bias', 'decoder.mid_block.attentions.0.to_out.0.weight', 'decoder.mid_block.attentions.0.to_out.0.bias']);
  });

  it('reports every wrong shape and missing tensor when the config does not match the checkpoint', async () => {
    const other = parseVaeConfig({ ...dec.json.config, block_out_channels: [32, 64, 128], layers_per_block: 3 });
    const err = await runVaeOnce(weights, other, 'decode', noise([1, 4, 4, 4], 1)).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ModelLoadError);
    const { badShapes, missing, message } = err as ModelLoadError;
    expect(badShapes).toContain('decoder.conv_in.weight: F32[64,4,3,3] in the file, float [128,4,3,3] expected');
    expect(badShapes).toContain('decoder.mid_block.attentions.0.to_q.weight: F32[64,64] in the file, float [128,128] expected');
    expect(missing).toEqual(expect.arrayContaining(['decoder.up_blocks.0.resnets.3.conv1.weight', 'decoder.up_blocks.2.resnets.3.norm2.bias']));
    expect(message).toMatch(/^AutoencoderKL: the checkpoint does not match its config\. missing \d+ tensors: .*unexpected shapes: /);
  });
});
