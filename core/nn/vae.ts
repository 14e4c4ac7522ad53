/**
 * AutoencoderKL (diffusers), the SD 1.x VAE, on the graph API. Scope paths
 * are the checkpoint keys:
 *
 *   encoder.{conv_in, down_blocks.{i}.{resnets.{j}, downsamplers.0.conv}, mid_block, conv_norm_out, conv_out}
 *   quant_conv, post_quant_conv
 *   decoder.{conv_in, mid_block, up_blocks.{i}.{resnets.{j}, upsamplers.0.conv}, conv_norm_out, conv_out}
 *   mid_block = resnets.0, attentions.0.{group_norm, to_q, to_k, to_v, to_out.0}, resnets.1
 *
 * Older diffusers checkpoints name the attention query/key/value/proj_attn:
 * wrap the resolver in `withLegacyVaeAttentionNames`. The LDM single-file
 * layout (`first_stage_model.encoder.down.{i}.block.{j}`...) is a resolver
 * concern too.
 */
import { FileFormatError } from '../errors.ts';
import * as F from '../graph/functional.ts';
import type { Tensor } from '../graph/graph.ts';
import * as L from './layers.ts';
import type { KeyResolver, Scope } from './params.ts';

/** diffusers' AutoencoderKL config keys that shape the model. */
export interface VaeConfig {
  in_channels: number;
  out_channels: number;
  down_block_types: string[];
  up_block_types: string[];
  block_out_channels: number[];
  layers_per_block: number;
  act_fn: 'silu';
  latent_channels: number;
  norm_num_groups: number;
  sample_size: number;
  /** Not applied here: callers multiply encoded means by it and divide latents by it before decoding. */
  scaling_factor: number;
}

/** The SD 1.x VAE config. */
export const SD1_VAE_CONFIG: Readonly<VaeConfig> = {
  in_channels: 3,
  out_channels: 3,
  down_block_types: ['DownEncoderBlock2D', 'DownEncoderBlock2D', 'DownEncoderBlock2D', 'DownEncoderBlock2D'],
  up_block_types: ['UpDecoderBlock2D', 'UpDecoderBlock2D', 'UpDecoderBlock2D', 'UpDecoderBlock2D'],
  block_out_channels: [128, 256, 512, 512],
  layers_per_block: 2,
  act_fn: 'silu',
  latent_channels: 4,
  norm_num_groups: 32,
  sample_size: 512,
  scaling_factor: 0.18215,
};

/** AutoencoderKL builds its Encoder and Decoder with this eps for every GroupNorm. */
const NORM_EPS = 1e-6;

/**
 * A config.json object over the SD 1.x defaults. Unknown keys are ignored;
 * every bad value is reported at once.
 */
export function parseVaeConfig(json: unknown, source = 'config.json'): VaeConfig {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new FileFormatError(source, `${source}: a VAE config must be a JSON object`);
  const raw = json as Record<string, unknown>;
  const problems: string[] = [];
  const pick = <K extends keyof VaeConfig>(key: K, ok: (v: unknown) => boolean, want: string): VaeConfig[K] => {
    const v = raw[key] ?? SD1_VAE_CONFIG[key];
    if (ok(v)) return v as VaeConfig[K];
    problems.push(`${key} ${JSON.stringify(v)} (${want})`);
    return SD1_VAE_CONFIG[key];
  };
  const positive = (v: unknown): boolean => Number.isSafeInteger(v) && (v as number) > 0;
  const positives = (v: unknown): boolean => Array.isArray(v) && v.length > 0 && v.every(positive);
  const allOf = (name: string) => (v: unknown) => Array.isArray(v) && v.every((t) => t === name);
  const cfg: VaeConfig = {
    in_channels: pick('in_channels', positive, 'a positive integer'),
    out_channels: pick('out_channels', positive, 'a positive integer'),
    down_block_types: pick('down_block_types', allOf('DownEncoderBlock2D'), 'only DownEncoderBlock2D is supported'),
    up_block_types: pick('up_block_types', allOf('UpDecoderBlock2D'), 'only UpDecoderBlock2D is supported'),
    block_out_channels: pick('block_out_channels', positives, 'positive integers'),
    layers_per_block: pick('layers_per_block', positive, 'a positive integer'),
    act_fn: pick('act_fn', (v) => v === 'silu', 'only silu is supported'),
    latent_channels: pick('latent_channels', positive, 'a positive integer'),
    norm_num_groups: pick('norm_num_groups', positive, 'a positive integer'),
    sample_size: pick('sample_size', positive, 'a positive integer'),
    scaling_factor: pick('scaling_factor', (v) => typeof v === 'number' && v > 0, 'a positive number'),
  };
  const levels = cfg.block_out_channels.length;
  if (cfg.down_block_types.length !== levels || cfg.up_block_types.length !== levels) {
    problems.push(`${cfg.down_block_types.length} down and ${cfg.up_block_types.length} up block types for ${levels} block_out_channels`);
  }
  const indivisible = cfg.block_out_channels.filter((c) => c % cfg.norm_num_groups !== 0);
  if (indivisible.length) problems.push(`block_out_channels ${indivisible.join(', ')} do not split into ${cfg.norm_num_groups} norm groups`);
  if (problems.length) throw new FileFormatError(source, `${source}: invalid AutoencoderKL config: ${problems.join('; ')}`);
  return cfg;
}

export interface VaeLatentDist {
  /** [B, latent, H/f, W/f], f = 2^(levels - 1). */
  mean: Tensor;
  /** Clamped to [-30, 20], as diffusers' DiagonalGaussianDistribution does. */
  logvar: Tensor;
  /** exp(logvar / 2). */
  std: Tensor;
}

/** encode(image).latent_dist: encoder, quant_conv, split into mean and log-variance. `scope` is the VAE root. */
export function vaeEncode(scope: Scope, cfg: VaeConfig, image: Tensor): VaeLatentDist {
  const c = 2 * cfg.latent_channels;
  const moments = L.conv2d(scope.scope('quant_conv'), vaeEncoder(scope.scope('encoder'), cfg, image), c, c, 1);
  const [mean, logvar] = F.split(moments, 1, 2);
  const clamped = F.clip(logvar, -30, 20);
  return { mean, logvar: clamped, std: F.exp(F.mul(clamped, 0.5)) };
}

/** decode(z).sample: post_quant_conv, then the decoder. `z` is unscaled (already divided by scaling_factor). */
export function vaeDecode(scope: Scope, cfg: VaeConfig, z: Tensor): Tensor {
  const c = cfg.latent_channels;
  return vaeDecoder(scope.scope('decoder'), cfg, L.conv2d(scope.scope('post_quant_conv'), z, c, c, 1));
}

/** Encoder: image [B, in, H, W] -> moments [B, 2 latent, H/f, W/f]. */
export function vaeEncoder(s: Scope, cfg: VaeConfig, image: Tensor): Tensor {
  const ch = cfg.block_out_channels;
  // 1. conv_in
  let h = L.conv2d(s.scope('conv_in'), image, cfg.in_channels, ch[0], 3, { padding: 1 });

  // 2. down blocks (DownEncoderBlock2D): resnets, then a downsampler on all but the last
  ch.forEach((out, i) => {
    const block = s.scope('down_blocks').scope(i);
    for (let j = 0; j < cfg.layers_per_block; j++) h = resnet(block.scope('resnets').scope(j), cfg, h, out);
    if (i < ch.length - 1) h = downsample(block.scope('downsamplers').scope(0), h);
  });

  // 3. mid block
  h = midBlock(s.scope('mid_block'), cfg, h);

  // 4. out
  h = F.silu(L.groupNorm(s.scope('conv_norm_out'), h, cfg.norm_num_groups, NORM_EPS));
  return L.conv2d(s.scope('conv_out'), h, ch[ch.length - 1], 2 * cfg.latent_channels, 3, { padding: 1 });
}

/** Decoder: latents [B, latent, h, w] -> image [B, out, h*f, w*f]. */
export function vaeDecoder(s: Scope, cfg: VaeConfig, z: Tensor): Tensor {
  const ch = [...cfg.block_out_channels].reverse();
  // 1. conv_in
  let h = L.conv2d(s.scope('conv_in'), z, cfg.latent_channels, ch[0], 3, { padding: 1 });

  // 2. mid block
  h = midBlock(s.scope('mid_block'), cfg, h);

  // 3. up blocks (UpDecoderBlock2D): one more resnet than the encoder, then an upsampler on all but the last
  ch.forEach((out, i) => {
    const block = s.scope('up_blocks').scope(i);
    for (let j = 0; j < cfg.layers_per_block + 1; j++) h = resnet(block.scope('resnets').scope(j), cfg, h, out);
    if (i < ch.length - 1) h = upsample(block.scope('upsamplers').scope(0), h);
  });

  // 4. out
  h = F.silu(L.groupNorm(s.scope('conv_norm_out'), h, cfg.norm_num_groups, NORM_EPS));
  return L.conv2d(s.scope('conv_out'), h, ch[ch.length - 1], cfg.out_channels, 3, { padding: 1 });
}

/** UNetMidBlock2D without temb: resnet, single-head attention, resnet. */
function midBlock(s: Scope, cfg: VaeConfig, x: Tensor): Tensor {
  const c = x.shape[1];
  let h = resnet(s.scope('resnets').scope(0), cfg, x, c);
  h = attention(s.scope('attentions').scope(0), cfg, h);
  return resnet(s.scope('resnets').scope(1), cfg, h, c);
}

/** ResnetBlock2D without temb: shortcut(x) + conv2(silu(norm2(conv1(silu(norm1(x)))))). */
function resnet(s: Scope, cfg: VaeConfig, x: Tensor, outChannels: number): Tensor {
  const inChannels = x.shape[1];
  let h = L.conv2d(s.scope('conv1'), F.silu(L.groupNorm(s.scope('norm1'), x, cfg.norm_num_groups, NORM_EPS)), inChannels, outChannels, 3, { padding: 1 });
  h = L.conv2d(s.scope('conv2'), F.silu(L.groupNorm(s.scope('norm2'), h, cfg.norm_num_groups, NORM_EPS)), outChannels, outChannels, 3, { padding: 1 });
  const shortcut = inChannels === outChannels ? x : L.conv2d(s.scope('conv_shortcut'), x, inChannels, outChannels, 1);
  return F.add(shortcut, h);
}

/** Attention over the H*W positions: one head of width C, GroupNorm first, residual after. */
function attention(s: Scope, cfg: VaeConfig, x: Tensor): Tensor {
  const [b, c, height, width] = x.shape;
  let h = L.groupNorm(s.scope('group_norm'), x, cfg.norm_num_groups, NORM_EPS);
  h = F.transpose(F.reshape(h, [b, c, height * width]), [0, 2, 1]);
  h = F.sdpa(L.linear(s.scope('to_q'), h, c, c), L.linear(s.scope('to_k'), h, c, c), L.linear(s.scope('to_v'), h, c, c));
  h = L.linear(s.scope('to_out').scope(0), h, c, c);
  return F.add(F.reshape(F.transpose(h, [0, 2, 1]), x.shape), x);
}

/** Downsample2D as the VAE uses it: pad right and bottom by 1, then a 3x3 stride-2 conv without padding. */
function downsample(s: Scope, x: Tensor): Tensor {
  const c = x.shape[1];
  return L.conv2d(s.scope('conv'), x, c, c, 3, { stride: 2, padding: [0, 0, 1, 1] });
}

/** Upsample2D: nearest x2, then a 3x3 conv. */
function upsample(s: Scope, x: Tensor): Tensor {
  const c = x.shape[1];
  return L.conv2d(s.scope('conv'), F.upsampleNearest(x, 2), c, c, 3, { padding: 1 });
}

const LEGACY_ATTENTION_NAMES: readonly [string, string][] = [
  ['.to_q.', '.query.'],
  ['.to_k.', '.key.'],
  ['.to_v.', '.value.'],
  ['.to_out.0.', '.proj_attn.'],
];

/**
 * Falls back to the pre-0.14 diffusers names of the mid-block attention
 * (`attentions.0.query` ... `proj_attn`) for keys the resolver lacks.
 */
export function withLegacyVaeAttentionNames(resolve: KeyResolver): KeyResolver {
  return (name) => {
    const hit = resolve(name);
    if (hit || !name.includes('.attentions.')) return hit;
    const legacy = LEGACY_ATTENTION_NAMES.find(([now]) => name.includes(now));
    return legacy ? resolve(name.replace(legacy[0], legacy[1])) : undefined;
  };
}
