/**
 * UNet2DConditionModel of Stable Diffusion 1.x (diffusers 0.27 layout) on the
 * graph API. Each function below is one diffusers module and reads its
 * weights from a Scope under the module's own key names, so the scope paths
 * are the checkpoint keys (`down_blocks.0.attentions.1.transformer_blocks.0.
 * attn2.to_k.weight`). Shapes come from the config and the input tensors:
 * any channel list, depth, head count, batch and latent size.
 */
import { GraphBuildError, LetheError } from '../errors.ts';
import * as F from '../graph/functional.ts';
import type { Tensor } from '../graph/graph.ts';
import { conv2d, groupNorm, layerNorm, linear } from './layers.ts';
import type { Scope } from './params.ts';

// --- config -----------------------------------------------------------------

export type DownBlockType = 'CrossAttnDownBlock2D' | 'DownBlock2D';
export type UpBlockType = 'UpBlock2D' | 'CrossAttnUpBlock2D';

/** The diffusers `config.json` keys an SD 1.x UNet varies; every other key must hold its SD 1.x value. */
export interface UNetConfig {
  readonly sample_size: number;
  readonly in_channels: number;
  readonly out_channels: number;
  readonly flip_sin_to_cos: boolean;
  readonly freq_shift: number;
  readonly down_block_types: readonly DownBlockType[];
  readonly mid_block_type: 'UNetMidBlock2DCrossAttn';
  readonly up_block_types: readonly UpBlockType[];
  readonly block_out_channels: readonly number[];
  readonly layers_per_block: number;
  readonly norm_num_groups: number;
  readonly norm_eps: number;
  readonly cross_attention_dim: number;
  /** The NUMBER of heads of every transformer (diffusers' SD 1.x misnomer); head dim = channels / heads. */
  readonly attention_head_dim: number;
}

/** SD 1.4 / 1.5 (runwayml/stable-diffusion-v1-5 `unet/config.json`). */
export const SD1_UNET_CONFIG: UNetConfig = {
  sample_size: 64,
  in_channels: 4,
  out_channels: 4,
  flip_sin_to_cos: true,
  freq_shift: 0,
  down_block_types: ['CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'DownBlock2D'],
  mid_block_type: 'UNetMidBlock2DCrossAttn',
  up_block_types: ['UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D'],
  block_out_channels: [320, 640, 1280, 1280],
  layers_per_block: 2,
  norm_num_groups: 32,
  norm_eps: 1e-5,
  cross_attention_dim: 768,
  attention_head_dim: 8,
};

/** A config this UNet cannot build; `family` names the model it belongs to when recognised. */
export class UNetConfigError extends LetheError {
  constructor(
    readonly key: string,
    readonly family: 'SD 2.x' | 'SDXL' | 'other' | null,
    message: string,
  ) {
    super('unet-config', message);
  }
}

/** Keys SD 1.x fixes, with the one value this implementation builds (absent keys take it too). */
const FIXED: Readonly<Record<string, unknown>> = {
  center_input_sample: false,
  downsample_padding: 1,
  mid_block_scale_factor: 1,
  act_fn: 'silu',
  dual_cross_attention: false,
  resnet_time_scale_shift: 'default',
  resnet_skip_time_act: false,
  resnet_out_scale_factor: 1,
  time_embedding_type: 'positional',
  time_embedding_dim: null,
  time_embedding_act_fn: null,
  timestep_post_act: null,
  conv_in_kernel: 3,
  conv_out_kernel: 3,
  attention_type: 'default',
  class_embeddings_concat: false,
  mid_block_only_cross_attention: null,
  cross_attention_norm: null,
  encoder_hid_dim_type: null,
  reverse_transformer_layers_per_block: null,
  addition_time_embed_dim: null,
  projection_class_embeddings_input_dim: null,
};

/** Settings that identify another model family: [key, is it set?, family, what it is]. */
const FOREIGN: readonly [string, (v: unknown) => boolean, 'SD 2.x' | 'SDXL' | 'other', string][] = [
  ['addition_embed_type', (v) => v != null, 'SDXL', 'an SDXL-style UNet (added text/time conditioning)'],
  ['transformer_layers_per_block', (v) => v != null && v !== 1, 'SDXL', 'an SDXL-style UNet (several transformer layers per block)'],
  ['use_linear_projection', (v) => v === true, 'SD 2.x', 'an SD 2.x UNet (linear proj_in/proj_out)'],
  ['attention_head_dim', (v) => Array.isArray(v), 'SD 2.x', 'an SD 2.x UNet (per-block head counts)'],
  ['num_attention_heads', (v) => v != null, 'other', 'a UNet with num_attention_heads set, which SD 1.x configs never set'],
  ['class_embed_type', (v) => v != null, 'other', 'a class-conditioned UNet (upscaler / unCLIP style)'],
  ['num_class_embeds', (v) => v != null, 'other', 'a class-conditioned UNet'],
  ['time_cond_proj_dim', (v) => v != null, 'other', 'a guidance-distilled UNet (LCM style time_cond_proj_dim)'],
  ['encoder_hid_dim', (v) => v != null, 'other', 'a UNet with an encoder_hid_dim projection (IF / Kandinsky style)'],
];

/**
 * Reads a diffusers UNet `config.json` (parsed JSON). Missing keys take the
 * SD 1.x value; configs of other families (SD 2.x, SDXL, ...) and settings
 * this UNet does not build are refused with a UNetConfigError naming them.
 */
export function parseUNetConfig(json: unknown): UNetConfig {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new UNetConfigError('', null, 'UNet config: expected a JSON object (diffusers unet/config.json)');
  const raw = json as Record<string, unknown>;
  const cls = raw._class_name;
  if (cls !== undefined && cls !== 'UNet2DConditionModel') {
    throw new UNetConfigError('_class_name', 'other', `UNet config: this is a ${String(cls)}, not a UNet2DConditionModel; Lethe supports Stable Diffusion 1.x UNets only`);
  }
  for (const [key, isSet, family, what] of FOREIGN) {
    if (isSet(raw[key])) {
      throw new UNetConfigError(key, family, `UNet config: ${key} = ${JSON.stringify(raw[key])} makes this ${what}; Lethe supports Stable Diffusion 1.x UNets only`);
    }
  }
  for (const [key, want] of Object.entries(FIXED)) {
    if (key in raw && JSON.stringify(raw[key]) !== JSON.stringify(want)) {
      throw new UNetConfigError(key, null, `UNet config: ${key} = ${JSON.stringify(raw[key])} is not supported (SD 1.x uses ${JSON.stringify(want)})`);
    }
  }
  if (Array.isArray(raw.only_cross_attention) ? raw.only_cross_attention.some(Boolean) : raw.only_cross_attention === true) {
    throw new UNetConfigError('only_cross_attention', null, 'UNet config: only_cross_attention is not supported (SD 1.x uses false)');
  }

  const d = SD1_UNET_CONFIG;
  const cfg: UNetConfig = {
    sample_size: int(raw, 'sample_size', d.sample_size),
    in_channels: int(raw, 'in_channels', d.in_channels),
    out_channels: int(raw, 'out_channels', d.out_channels),
    flip_sin_to_cos: bool(raw, 'flip_sin_to_cos', d.flip_sin_to_cos),
    freq_shift: num(raw, 'freq_shift', d.freq_shift),
    down_block_types: names(raw, 'down_block_types', d.down_block_types, ['CrossAttnDownBlock2D', 'DownBlock2D']),
    mid_block_type: names(raw, 'mid_block_type', d.mid_block_type, ['UNetMidBlock2DCrossAttn'])[0],
    up_block_types: names(raw, 'up_block_types', d.up_block_types, ['UpBlock2D', 'CrossAttnUpBlock2D']),
    block_out_channels: ints(raw, 'block_out_channels', d.block_out_channels),
    layers_per_block: int(raw, 'layers_per_block', d.layers_per_block),
    norm_num_groups: int(raw, 'norm_num_groups', d.norm_num_groups),
    norm_eps: num(raw, 'norm_eps', d.norm_eps),
    cross_attention_dim: int(raw, 'cross_attention_dim', d.cross_attention_dim),
    attention_head_dim: int(raw, 'attention_head_dim', d.attention_head_dim),
  };

  const n = cfg.block_out_channels.length;
  if (cfg.down_block_types.length !== n || cfg.up_block_types.length !== n) {
    throw new UNetConfigError('block_out_channels', null, `UNet config: ${n} block_out_channels but ${cfg.down_block_types.length} down and ${cfg.up_block_types.length} up block types`);
  }
  cfg.block_out_channels.forEach((c, i) => {
    if (c % cfg.norm_num_groups !== 0) throw new UNetConfigError('norm_num_groups', null, `UNet config: ${c} channels do not split into norm_num_groups = ${cfg.norm_num_groups}`);
    const attends = i === n - 1 || cfg.down_block_types[i] === 'CrossAttnDownBlock2D' || cfg.up_block_types[n - 1 - i] === 'CrossAttnUpBlock2D';
    if (attends && c % cfg.attention_head_dim !== 0) throw new UNetConfigError('attention_head_dim', null, `UNet config: ${c} channels do not split into attention_head_dim = ${cfg.attention_head_dim} heads`);
  });
  return cfg;
}

function int(raw: Record<string, unknown>, key: string, fallback: number): number {
  const v = raw[key] === undefined ? fallback : raw[key];
  if (Array.isArray(v)) throw new UNetConfigError(key, null, `UNet config: ${key} as a per-block list is not SD 1.x style; expected one positive integer`);
  if (!Number.isInteger(v) || (v as number) < 1) throw new UNetConfigError(key, null, `UNet config: ${key} must be a positive integer, got ${JSON.stringify(v)}`);
  return v as number;
}

function num(raw: Record<string, unknown>, key: string, fallback: number): number {
  const v = raw[key] === undefined ? fallback : raw[key];
  if (typeof v !== 'number' || !Number.isFinite(v)) throw new UNetConfigError(key, null, `UNet config: ${key} must be a number, got ${JSON.stringify(v)}`);
  return v;
}

function bool(raw: Record<string, unknown>, key: string, fallback: boolean): boolean {
  const v = raw[key] === undefined ? fallback : raw[key];
  if (typeof v !== 'boolean') throw new UNetConfigError(key, null, `UNet config: ${key} must be true or false, got ${JSON.stringify(v)}`);
  return v;
}

function ints(raw: Record<string, unknown>, key: string, fallback: readonly number[]): number[] {
  const v = raw[key] === undefined ? fallback : raw[key];
  if (!Array.isArray(v) || v.length === 0 || !v.every((x) => Number.isInteger(x) && x > 0)) {
    throw new UNetConfigError(key, null, `UNet config: ${key} must be a non-empty list of positive integers, got ${JSON.stringify(v)}`);
  }
  return v as number[];
}

function names<T extends string>(raw: Record<string, unknown>, key: string, fallback: T | readonly T[], allowed: readonly T[]): T[] {
  const v = raw[key] === undefined ? fallback : raw[key];
  const list = Array.isArray(v) ? v : [v];
  for (const x of list) {
    if (!allowed.includes(x as T)) throw new UNetConfigError(key, null, `UNet config: ${key} ${JSON.stringify(x)} is not an SD 1.x block (expected ${allowed.join(' or ')})`);
  }
  return list as T[];
}

// --- model --------------------------------------------------------------------

/** Called with a module's key prefix and its output, for comparing intermediates (acts.safetensors). */
export type Tap = (module: string, output: Tensor) => void;

/**
 * Predicted noise for `sample` [B, in_channels, H, W] at `timestep` (float
 * [B], or [] for all) given `encoderHiddenStates` [B, L, cross_attention_dim].
 */
export function unet(s: Scope, cfg: UNetConfig, sample: Tensor, timestep: Tensor, encoderHiddenStates: Tensor, tap?: Tap): Tensor {
  const [b, inC] = sample.shape;
  checkInputs(cfg, sample, timestep, encoderHiddenStates);
  const out = (m: Scope, t: Tensor): Tensor => {
    tap?.(m.prefix, t);
    return t;
  };
  const channels = cfg.block_out_channels;
  const levels = channels.length;
  const ctx = encoderHiddenStates;

  // 1. time
  const tProj = out(s.scope('time_proj'), timestepProjection(timestep, b, channels[0], cfg));
  const temb = out(s.scope('time_embedding'), timestepEmbedding(s.scope('time_embedding'), tProj, 4 * channels[0]));

  // 2. pre-process
  let h = out(s.scope('conv_in'), conv2d(s.scope('conv_in'), sample, inC, channels[0], 3, { padding: 1 }));

  // 3. down: every resnet(+attention) output and every downsampler output is a skip
  const skips: Tensor[] = [h];
  cfg.down_block_types.forEach((type, i) => {
    const block = s.scope('down_blocks').scope(i);
    for (let j = 0; j < cfg.layers_per_block; j++) {
      h = out(block.scope('resnets').scope(j), resnet(block.scope('resnets').scope(j), h, temb, channels[i], cfg));
      if (type === 'CrossAttnDownBlock2D') h = out(block.scope('attentions').scope(j), transformer2d(block.scope('attentions').scope(j), h, ctx, cfg));
      skips.push(h);
    }
    if (i < levels - 1) {
      h = out(block.scope('downsamplers').scope(0), downsample(block.scope('downsamplers').scope(0), h));
      skips.push(h);
    }
    out(block, h);
  });

  // 4. mid
  const mid = s.scope('mid_block');
  h = out(mid.scope('resnets').scope(0), resnet(mid.scope('resnets').scope(0), h, temb, channels[levels - 1], cfg));
  h = out(mid.scope('attentions').scope(0), transformer2d(mid.scope('attentions').scope(0), h, ctx, cfg));
  h = out(mid.scope('resnets').scope(1), resnet(mid.scope('resnets').scope(1), h, temb, channels[levels - 1], cfg));
  out(mid, h);

  // 5. up: each resnet takes the latest skip; the upsampler resizes to the next skip's size, which is
  // x2 when the latent size halves evenly and what diffusers' forwarded upsample_size gives when not
  cfg.up_block_types.forEach((type, i) => {
    const block = s.scope('up_blocks').scope(i);
    const c = channels[levels - 1 - i];
    for (let j = 0; j <= cfg.layers_per_block; j++) {
      h = F.concat([h, skips.pop()!], 1);
      h = out(block.scope('resnets').scope(j), resnet(block.scope('resnets').scope(j), h, temb, c, cfg));
      if (type === 'CrossAttnUpBlock2D') h = out(block.scope('attentions').scope(j), transformer2d(block.scope('attentions').scope(j), h, ctx, cfg));
    }
    if (i < levels - 1) {
      const [outH, outW] = skips[skips.length - 1].shape.slice(2);
      h = out(block.scope('upsamplers').scope(0), upsample(block.scope('upsamplers').scope(0), h, outH, outW));
    }
    out(block, h);
  });

  // 6. post-process
  h = F.silu(out(s.scope('conv_norm_out'), groupNorm(s.scope('conv_norm_out'), h, cfg.norm_num_groups, cfg.norm_eps)));
  return out(s.scope('conv_out'), conv2d(s.scope('conv_out'), h, channels[0], cfg.out_channels, 3, { padding: 1 }));
}

function checkInputs(cfg: UNetConfig, sample: Tensor, timestep: Tensor, ctx: Tensor): void {
  const shape = (t: Tensor): string => `[${t.shape.join(', ')}]`;
  const b = sample.shape[0];
  if (sample.rank !== 4 || sample.shape[1] !== cfg.in_channels) throw new GraphBuildError(`unet: sample ${shape(sample)} must be [B, ${cfg.in_channels}, H, W]`);
  if (timestep.rank > 1 || (timestep.rank === 1 && timestep.shape[0] !== b)) throw new GraphBuildError(`unet: timestep ${shape(timestep)} must be [${b}] or a scalar`);
  if (ctx.rank !== 3 || ctx.shape[0] !== b || ctx.shape[2] !== cfg.cross_attention_dim) {
    throw new GraphBuildError(`unet: encoder_hidden_states ${shape(ctx)} must be [${b}, L, ${cfg.cross_attention_dim}]`);
  }
}

/**
 * `time_proj` (diffusers Timesteps): [cos(t f), sin(t f)] with
 * f_i = exp(-ln(10000) i / (half - freq_shift)), cos first when flip_sin_to_cos.
 * The frequencies are rounded to float32 step by step, as torch computes them.
 */
function timestepProjection(timestep: Tensor, batch: number, dim: number, cfg: UNetConfig): Tensor {
  const half = Math.floor(dim / 2);
  const negLog = Math.fround(-Math.log(10000));
  const freqs = Float32Array.from({ length: half }, (_, i) => Math.exp(Math.fround(Math.fround(negLog * i) / (half - cfg.freq_shift))));
  const t = F.expand(F.reshape(F.cast(timestep, 'float32'), [-1, 1]), [batch, 1]);
  const args = F.mul(t, timestep.graph.constant(freqs, [1, half]));
  const [sin, cos] = [F.sin(args), F.cos(args)];
  const emb = F.concat(cfg.flip_sin_to_cos ? [cos, sin] : [sin, cos], 1);
  return dim % 2 === 1 ? F.pad(emb, [0, 0, 0, 1]) : emb;
}

/** `time_embedding`: linear_1, SiLU, linear_2. */
function timestepEmbedding(s: Scope, x: Tensor, dim: number): Tensor {
  const h = F.silu(linear(s.scope('linear_1'), x, x.shape[1], dim));
  return linear(s.scope('linear_2'), h, dim, dim);
}

/** ResnetBlock2D: two norm-SiLU-conv stages with the time embedding added between, plus the shortcut. */
function resnet(s: Scope, x: Tensor, temb: Tensor, outC: number, cfg: UNetConfig): Tensor {
  const [b, inC] = x.shape;
  const { norm_num_groups: groups, norm_eps: eps } = cfg;
  let h = conv2d(s.scope('conv1'), F.silu(groupNorm(s.scope('norm1'), x, groups, eps)), inC, outC, 3, { padding: 1 });
  h = F.add(h, F.reshape(linear(s.scope('time_emb_proj'), F.silu(temb), temb.shape[1], outC), [b, outC, 1, 1]));
  h = conv2d(s.scope('conv2'), F.silu(groupNorm(s.scope('norm2'), h, groups, eps)), outC, outC, 3, { padding: 1 });
  const shortcut = inC === outC ? x : conv2d(s.scope('conv_shortcut'), x, inC, outC, 1);
  return F.add(shortcut, h);
}

/** Transformer2DModel: GroupNorm (eps 1e-6), 1x1 proj_in, one transformer block over H*W tokens, 1x1 proj_out, residual. */
function transformer2d(s: Scope, x: Tensor, ctx: Tensor, cfg: UNetConfig): Tensor {
  const [b, c, height, width] = x.shape;
  let h = conv2d(s.scope('proj_in'), groupNorm(s.scope('norm'), x, cfg.norm_num_groups, 1e-6), c, c, 1);
  h = F.reshape(F.transpose(h, [0, 2, 3, 1]), [b, height * width, c]);
  h = basicTransformerBlock(s.scope('transformer_blocks').scope(0), h, ctx, cfg.attention_head_dim);
  h = F.transpose(F.reshape(h, [b, height, width, c]), [0, 3, 1, 2]);
  return F.add(conv2d(s.scope('proj_out'), h, c, c, 1), x);
}

/** BasicTransformerBlock: self-attention, cross-attention, GEGLU feed-forward, each pre-LayerNorm with a residual. */
function basicTransformerBlock(s: Scope, x: Tensor, ctx: Tensor, heads: number): Tensor {
  let h = F.add(attention(s.scope('attn1'), layerNorm(s.scope('norm1'), x, 1e-5), null, heads), x);
  h = F.add(attention(s.scope('attn2'), layerNorm(s.scope('norm2'), h, 1e-5), ctx, heads), h);
  return F.add(feedForward(s.scope('ff'), layerNorm(s.scope('norm3'), h, 1e-5)), h);
}

/** Attention: bias-free to_q/to_k/to_v, softmax(q k^T / sqrt(d)) v per head on [B, heads, L, d], to_out.0. */
function attention(s: Scope, x: Tensor, ctx: Tensor | null, heads: number): Tensor {
  const [b, lq, c] = x.shape;
  const kv = ctx ?? x;
  const d = c / heads;
  const toHeads = (t: Tensor): Tensor => F.transpose(F.reshape(t, [b, t.shape[1], heads, d]), [0, 2, 1, 3]);
  const q = toHeads(linear(s.scope('to_q'), x, c, c, false));
  const k = toHeads(linear(s.scope('to_k'), kv, kv.shape[2], c, false));
  const v = toHeads(linear(s.scope('to_v'), kv, kv.shape[2], c, false));
  const o = F.reshape(F.transpose(F.sdpa(q, k, v), [0, 2, 1, 3]), [b, lq, c]);
  return linear(s.scope('to_out').scope(0), o, c, c);
}

/** FeedForward with GEGLU: net.0.proj (C -> 8C) split into [hidden, gate], hidden * gelu(gate) (erf), net.2 (4C -> C). */
function feedForward(s: Scope, x: Tensor): Tensor {
  const c = x.shape[x.rank - 1];
  const [hidden, gate] = F.split(linear(s.scope('net').scope(0).scope('proj'), x, c, 8 * c), -1, 2);
  return linear(s.scope('net').scope(2), F.mul(hidden, F.gelu(gate)), 4 * c, c);
}

/** Downsample2D: 3x3 conv, stride 2, pad 1. */
function downsample(s: Scope, x: Tensor): Tensor {
  const c = x.shape[1];
  return conv2d(s.scope('conv'), x, c, c, 3, { stride: 2, padding: 1 });
}

/** Upsample2D: nearest resize (x2, or to the next skip's size), then 3x3 conv. */
function upsample(s: Scope, x: Tensor, outH: number, outW: number): Tensor {
  const c = x.shape[1];
  return conv2d(s.scope('conv'), F.resizeNearest(x, outH, outW), c, c, 3, { padding: 1 });
}
