import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { Graph } from '../core/graph/graph.ts';
import { emitOnnx } from '../core/graph/onnx.ts';
import { openSafetensors } from '../core/io/safetensors.ts';
import { ModelLoadError, ParamBinder, prefixResolver, type KeyResolver } from '../core/nn/params.ts';
import { parseUNetConfig, SD1_UNET_CONFIG, unet, UNetConfigError, type UNetConfig } from '../core/nn/unet.ts';
import { compareOutputs, loadFixture, type ParityRunner } from '../core/parity/fixture.ts';
import { runUNetForward, runUNetGrad } from '../core/parity/unet.ts';
import { Session } from '../core/runtime/session.ts';
import { FIXTURES_DIR, hasShared } from './helpers/shared.ts';

const SD1 = path.join(FIXTURES_DIR, 'sd1');

function refusal(json: unknown): UNetConfigError {
  try {
    parseUNetConfig(json);
  } catch (e) {
    if (e instanceof UNetConfigError) return e;
    throw e;
  }
  throw new Error('the config was accepted');
}

describe('parseUNetConfig', () => {
  it('fills SD 1.x defaults', () => {
    expect(parseUNetConfig({})).toEqual(SD1_UNET_CONFIG);
    expect(parseUNetConfig({ _class_name: 'UNet2DConditionModel', block_out_channels: [32, 64], down_block_types: ['CrossAttnDownBlock2D', 'DownBlock2D'], up_block_types: ['UpBlock2D', 'CrossAttnUpBlock2D'], norm_num_groups: 8, attention_head_dim: 4, use_linear_projection: false, transformer_layers_per_block: 1 })).toMatchObject({ block_out_channels: [32, 64], attention_head_dim: 4 });
  });

  it('names SD 2.x, SDXL and other families', () => {
    const sd2 = refusal({ attention_head_dim: [5, 10, 20, 20], use_linear_projection: true, cross_attention_dim: 1024 });
    expect([sd2.family, sd2.key]).toEqual(['SD 2.x', 'use_linear_projection']);
    expect(refusal({ attention_head_dim: [5, 10, 20, 20] }).family).toBe('SD 2.x');
    const xl = refusal({ addition_embed_type: 'text_time', transformer_layers_per_block: [1, 2, 10], use_linear_projection: true });
    expect([xl.family, xl.key]).toEqual(['SDXL', 'addition_embed_type']);
    expect(refusal({ transformer_layers_per_block: 2 }).family).toBe('SDXL');
    expect(refusal({ _class_name: 'UNet2DModel' }).message).toMatch(/UNet2DModel/);
    expect(refusal({ time_cond_proj_dim: 256 }).family).toBe('other');
  });

  it('refuses settings it does not build and inconsistent shapes', () => {
    expect(refusal({ resnet_time_scale_shift: 'scale_shift' }).key).toBe('resnet_time_scale_shift');
    expect(refusal({ layers_per_block: [2, 2, 2, 2] }).key).toBe('layers_per_block');
    expect(refusal({ down_block_types: ['CrossAttnDownBlock2D', 'SimpleCrossAttnDownBlock2D', 'DownBlock2D', 'DownBlock2D'] }).key).toBe('down_block_types');
    expect(refusal({ block_out_channels: [320, 640, 1280] }).key).toBe('block_out_channels');
    expect(refusal({ norm_num_groups: 48 }).key).toBe('norm_num_groups');
    expect(refusal({ mid_block_type: null }).key).toBe('mid_block_type');
    expect(refusal({ cross_attention_dim: null }).key).toBe('cross_attention_dim');
  });
});

describe.skipIf(!hasShared)('UNet2DConditionModel against the reference vectors', () => {
  const worst: string[] = [];
  afterAll(() => console.log(`worst error / allowed: ${worst.join(', ')}`));

  const cases: [string, ParityRunner][] = [
    ['unet-forward', runUNetForward],
    ['unet-forward-scalar-t', runUNetForward],
    ['unet-grad', runUNetGrad],
  ];
  it.each(cases)('%s', async (name, runner) => {
    const c = loadFixture(path.join(SD1, name));
    const report = compareOutputs(c, await runner(c));
    expect(report.filter((r) => !r.pass).map((r) => `${r.name}: ${r.message ?? `${r.worstRatio.toFixed(2)}x the tolerance`}`)).toEqual([]);
    expect(report.length).toBe(Object.keys(c.json.outputs).length);
    const top = report.reduce((a, r) => (r.worstRatio > a.worstRatio ? r : a));
    worst.push(`${name} ${top.worstRatio.toFixed(3)} (${top.name})`);
  }, 120_000);

  const weightsPath = (): string => path.join(SD1, 'unet-forward', 'weights.safetensors');
  const fixtureConfig = (): UNetConfig => parseUNetConfig(loadFixture(path.join(SD1, 'unet-forward')).json.config);

  /** Builds the UNet over `resolve` for the given shapes; returns what finish() threw, if anything. */
  function build(cfg: UNetConfig, resolve: KeyResolver, sample = [2, 4, 8, 8], t: number[] = [2], ctx = [2, 77, 32]) {
    const g = new Graph();
    const binder = new ParamBinder(g, resolve);
    const out = unet(binder.scope(''), cfg, g.input('x', sample), g.input('t', t), g.input('encoder_hidden_states', ctx));
    let error: unknown = null;
    try {
      binder.finish('UNet');
    } catch (e) {
      error = e;
    }
    return { out, error };
  }

  it('latents that are not a multiple of 8 resize to the skip size (pipeline case, 4x4)', async () => {
    const c = loadFixture(path.join(SD1, 'pipeline'));
    const io = c.io!;
    const weights = openSafetensors(c.weightsPath('unet'));
    const cfg = parseUNetConfig((c.json.config as { unet: unknown }).unet);
    const { out, error } = build(cfg, prefixResolver([weights]), [4, 4, 4, 4], [], [4, 77, 32]);
    expect(error).toBeNull();
    const session = await Session.create(emitOnnx({ out }), { provider: 'cpu' });
    const ctx = new Float32Array([...io.readAsFloat32('expected.negative_prompt_embeds'), ...io.readAsFloat32('expected.prompt_embeds')]);
    const timesteps = io.read('expected.timesteps') as BigInt64Array;
    const actual: Record<string, { shape: number[]; data: Float32Array }> = {};
    for (let i = 0; i < timesteps.length; i++) {
      const latents = i === 0 ? io.readAsFloat32('input.latents') : io.readAsFloat32(`expected.latents.${i - 1}`);
      const r = await session.run({ x: new Float32Array([...latents, ...latents]), t: new Float32Array([Number(timesteps[i])]), encoder_hidden_states: ctx });
      actual[`unet_out.${i}`] = { shape: [4, 4, 4, 4], data: r.out.data as Float32Array };
    }
    await session.release();
    weights.close();
    const report = compareOutputs(c, actual).filter((r) => r.name.startsWith('unet_out.'));
    expect(report).toHaveLength(5);
    expect(report.filter((r) => !r.pass).map((r) => `${r.name}: ${r.worstRatio.toFixed(2)}x`)).toEqual([]);
    worst.push(`pipeline unet_out ${Math.max(...report.map((r) => r.worstRatio)).toFixed(3)}`);
  }, 60_000);

  it('odd latent sizes build and keep their shape (nearest resize by gather)', async () => {
    const weights = openSafetensors(weightsPath());
    const { out, error } = build(fixtureConfig(), prefixResolver([weights]), [1, 4, 12, 10], [1], [1, 77, 32]);
    expect(error).toBeNull();
    expect(out.shape).toEqual([1, 4, 12, 10]);
    const session = await Session.create(emitOnnx({ out }), { provider: 'cpu' });
    const r = await session.run({ x: new Float32Array(480).map((_, k) => Math.sin(k)), t: new Float32Array([500]), encoder_hidden_states: new Float32Array(77 * 32).map((_, k) => Math.cos(k)) });
    expect((r.out.data as Float32Array).every(Number.isFinite)).toBe(true);
    await session.release();
    weights.close();
  }, 60_000);

  it('a checkpoint missing keys gives one ModelLoadError listing them all', () => {
    const weights = openSafetensors(weightsPath());
    const hidden = ['conv_out.bias', 'mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight', 'up_blocks.3.resnets.2.conv_shortcut.weight'];
    const all = prefixResolver([weights]);
    const { error } = build(fixtureConfig(), (name) => (hidden.includes(name) ? undefined : all(name)));
    weights.close();
    expect(error).toBeInstanceOf(ModelLoadError);
    const e = error as ModelLoadError;
    expect([...e.missing].sort()).toEqual([...hidden].sort());
    expect(e.badShapes).toEqual([]);
    for (const key of hidden) expect(e.message).toContain(key);
  });

  it('a config that does not match the weights fails with the bad shapes listed', () => {
    const weights = openSafetensors(weightsPath());
    const { error } = build({ ...fixtureConfig(), block_out_channels: [32, 64, 64, 128] }, prefixResolver([weights]));
    weights.close();
    expect(error).toBeInstanceOf(ModelLoadError);
    const e = error as ModelLoadError;
    expect(e.badShapes.some((s) => s.startsWith('down_blocks.3.resnets.0.conv1.weight: F32[64,64,3,3]'))).toBe(true);
    expect(e.badShapes.some((s) => s.startsWith('conv_norm_out.weight')) || e.badShapes.some((s) => s.startsWith('mid_block.'))).toBe(true);
    expect(e.missing).toContain('down_blocks.3.resnets.0.conv_shortcut.weight');
    expect(e.message).toMatch(/unexpected shapes: down_blocks\.3\.resnets\.0/);
  });
});
