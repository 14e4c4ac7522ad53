/**
 * Opens a user's Stable Diffusion 1.x model in either of the two layouts it
 * comes in, and hands out, per component (UNet, text encoder, VAE), a
 * KeyResolver in diffusers/transformers naming plus the component's config
 * JSON in diffusers' format:
 *
 * - a diffusers folder: `model_index.json`, `unet/`, `text_encoder/`, `vae/`
 *   (each `config.json` + safetensors weights, plain, `.fp16` variant or
 *   sharded with an `.index.json`), `tokenizer/`, `scheduler/`;
 * - a single-file LDM checkpoint (`.safetensors` as AUTOMATIC1111 and ComfyUI
 *   use): `model.diffusion_model.*`, `cond_stage_model.transformer.*`,
 *   `first_stage_model.*`. The key map between the two namings is generated
 *   from the config (block_out_channels, layers_per_block, block types), and
 *   the config itself is the SD 1.x one with the channel counts, depths and
 *   dims read off the tensor shapes, so smaller SD1-style models load too.
 *
 * Pickle files (`.ckpt`, `.pt`, `.bin`) are refused: loading one can run
 * arbitrary code. Other architectures (SD 2.x, SDXL, SD 3, Flux, inpainting
 * UNets, LoRAs...) are refused with an UnsupportedModelError naming them.
 * Nothing here reads tensor data except `hash()`: files are opened, their
 * headers parsed, and the weights stay where they lie.
 */
import { SD1_CLIP_TEXT_CONFIG } from '../nn/clip-text.ts';
import { SD1_UNET_CONFIG } from '../nn/unet.ts';
import { SD1_VAE_CONFIG } from '../nn/vae.ts';
import { createHash } from 'node:crypto';
import { closeSync, existsSync, fstatSync, openSync, readFileSync, readSync, readdirSync, statSync, type Stats } from 'node:fs';
import path from 'node:path';
import { FileFormatError, LetheError } from '../errors.ts';
import type { KeyResolver } from '../nn/params.ts';
import { openSafetensors, type SafetensorsFile } from './safetensors.ts';

// ---------------------------------------------------------------- errors

/** What an unsupported model was recognised as. */
export type ModelArchitecture =
  | 'SD 2.x'
  | 'SDXL'
  | 'SD 3'
  | 'Flux'
  | 'SD 1.x inpainting'
  | 'InstructPix2Pix'
  | 'LoRA'
  | 'textual inversion embedding'
  | 'not a diffusion model'
  | 'other';

const SUPPORTED = 'Lethe supports Stable Diffusion 1.x models only (SD 1.4, SD 1.5 and their fine-tunes), as a diffusers folder or a single-file .safetensors checkpoint';

/** The model is of an architecture Lethe does not build; `architecture` names it. */
export class UnsupportedModelError extends LetheError {
  constructor(
    readonly path: string,
    readonly architecture: ModelArchitecture,
    message: string,
  ) {
    super('unsupported-model', message);
  }
}

/** A part of the model is absent: `missing` names the files (or key groups of a single file). */
export class ModelIncompleteError extends FileFormatError {
  constructor(
    path: string,
    readonly missing: readonly string[],
    message: string,
  ) {
    super(path, message);
  }
}

/** A pickle (`.ckpt`, `.pt`, `.pth`, `.bin`) was offered: Lethe reads only safetensors. */
export class PickleCheckpointError extends FileFormatError {}

const PICKLE_WHY = 'Lethe reads only safetensors weights: pickle files (.ckpt, .pt, .pth, .bin) can run arbitrary code when they are loaded';

function pickleSingleFileError(file: string): PickleCheckpointError {
  const out = file.replace(/\.[^./\\]+$/, '') + '.safetensors';
  return new PickleCheckpointError(file, `${file}: this is a PyTorch pickle checkpoint. ${PICKLE_WHY}. Look for a .safetensors download of the same model, or convert it once in a Python environment you trust: `
    + `python -c "import torch, safetensors.torch as st; sd = torch.load(r'${file}', map_location='cpu', weights_only=True); sd = sd.get('state_dict', sd); `
    + `st.save_file({k: v.contiguous().clone() for k, v in sd.items() if isinstance(v, torch.Tensor)}, r'${out}')" and open ${path.basename(out)}`);
}

function pickleFolderError(dir: string, file: string): PickleCheckpointError {
  return new PickleCheckpointError(file, `${file}: the diffusers folder holds PyTorch pickle weights (.bin). ${PICKLE_WHY}. Convert the folder once in a Python environment you trust: `
    + `python -c "from diffusers import StableDiffusionPipeline; StableDiffusionPipeline.from_pretrained(r'${dir}').save_pretrained(r'${dir}-safetensors', safe_serialization=True)" and open the new folder`);
}

// ---------------------------------------------------------------- configs (diffusers JSON format)

export type JsonObject = { [key: string]: unknown };

/** A diffusers `unet/config.json` (UNet2DConditionModel); every key may be absent in a user's file. */
export interface UNetConfigJson extends JsonObject {
  _class_name?: string;
  sample_size?: number;
  in_channels?: number;
  out_channels?: number;
  down_block_types?: readonly string[];
  mid_block_type?: string;
  up_block_types?: readonly string[];
  block_out_channels?: readonly number[];
  layers_per_block?: number;
  norm_num_groups?: number;
  norm_eps?: number;
  cross_attention_dim?: number;
  /** The number of heads in SD 1.x configs (diffusers' misnomer). */
  attention_head_dim?: number | readonly number[];
  use_linear_projection?: boolean;
}

/** A transformers `text_encoder/config.json` (CLIPTextConfig). */
export interface ClipTextConfigJson extends JsonObject {
  vocab_size?: number;
  hidden_size?: number;
  intermediate_size?: number;
  num_hidden_layers?: number;
  num_attention_heads?: number;
  max_position_embeddings?: number;
  hidden_act?: string;
  layer_norm_eps?: number;
}

/** A diffusers `vae/config.json` (AutoencoderKL). */
export interface VaeConfigJson extends JsonObject {
  _class_name?: string;
  in_channels?: number;
  out_channels?: number;
  down_block_types?: string[];
  up_block_types?: string[];
  block_out_channels?: number[];
  layers_per_block?: number;
  latent_channels?: number;
  norm_num_groups?: number;
  sample_size?: number;
  scaling_factor?: number;
}

/** A diffusers `scheduler/scheduler_config.json`. */
export interface SchedulerConfigJson extends JsonObject {
  _class_name?: string;
  num_train_timesteps?: number;
  beta_start?: number;
  beta_end?: number;
  beta_schedule?: string;
}

/** runwayml/stable-diffusion-v1-5 `unet/config.json`, every diffusers 0.27 default written out. */
export const SD1_UNET_CONFIG_JSON: Readonly<UNetConfigJson> = deepFreeze({
  _class_name: 'UNet2DConditionModel',
  ...SD1_UNET_CONFIG,
  center_input_sample: false,
  only_cross_attention: false,
  downsample_padding: 1,
  mid_block_scale_factor: 1,
  dropout: 0.0,
  act_fn: 'silu',
  transformer_layers_per_block: 1,
  reverse_transformer_layers_per_block: null,
  encoder_hid_dim: null,
  encoder_hid_dim_type: null,
  num_attention_heads: null,
  dual_cross_attention: false,
  use_linear_projection: false,
  class_embed_type: null,
  addition_embed_type: null,
  addition_time_embed_dim: null,
  num_class_embeds: null,
  upcast_attention: false,
  resnet_time_scale_shift: 'default',
  resnet_skip_time_act: false,
  resnet_out_scale_factor: 1.0,
  time_embedding_type: 'positional',
  time_embedding_dim: null,
  time_embedding_act_fn: null,
  timestep_post_act: null,
  time_cond_proj_dim: null,
  conv_in_kernel: 3,
  conv_out_kernel: 3,
  projection_class_embeddings_input_dim: null,
  attention_type: 'default',
  class_embeddings_concat: false,
  mid_block_only_cross_attention: null,
  cross_attention_norm: null,
  addition_embed_type_num_heads: 64,
});

/** The text tower of openai/clip-vit-large-patch14 as SD 1.5 ships it (`text_encoder/config.json`). */
export const SD1_TEXT_ENCODER_CONFIG_JSON: Readonly<ClipTextConfigJson> = deepFreeze({
  architectures: ['CLIPTextModel'],
  model_type: 'clip_text_model',
  attention_dropout: 0.0,
  ...SD1_CLIP_TEXT_CONFIG,
  dropout: 0.0,
  initializer_factor: 1.0,
  initializer_range: 0.02,
  projection_dim: 768,
  torch_dtype: 'float32',
});

/** The SD 1.x VAE (`vae/config.json`). */
export const SD1_VAE_CONFIG_JSON: Readonly<VaeConfigJson> = deepFreeze({
  _class_name: 'AutoencoderKL',
  ...SD1_VAE_CONFIG,
  latents_mean: null,
  latents_std: null,
  force_upcast: true,
});

/**
 * The SD 1.x noise schedule as a DDIM config (Lethe's sampler; SD 1.5 folders
 * ship a PNDMScheduler config with the same betas and steps_offset).
 */
export const SD1_SCHEDULER_CONFIG_JSON: Readonly<SchedulerConfigJson> = deepFreeze({
  _class_name: 'DDIMScheduler',
  num_train_timesteps: 1000,
  beta_start: 0.00085,
  beta_end: 0.012,
  beta_schedule: 'scaled_linear',
  trained_betas: null,
  clip_sample: false,
  set_alpha_to_one: false,
  steps_offset: 1,
  prediction_type: 'epsilon',
  thresholding: false,
  dynamic_thresholding_ratio: 0.995,
  clip_sample_range: 1.0,
  sample_max_value: 1.0,
  timestep_spacing: 'leading',
  rescale_betas_zero_snr: false,
});

function deepFreeze<T>(x: T): T {
  if (typeof x === 'object' && x !== null) {
    for (const v of Object.values(x)) deepFreeze(v);
    Object.freeze(x);
  }
  return x;
}

/** A mutable deep copy of a frozen default. */
function copy<T>(x: Readonly<T>): T {
  return structuredClone(x) as T;
}

// ---------------------------------------------------------------- LDM key maps

/** Both directions between diffusers/transformers keys and the keys of a single-file LDM checkpoint. */
export interface LdmKeyMap {
  /** diffusers key -> LDM key (with its `model.diffusion_model.`-style prefix), or undefined outside the map. */
  toLdm(key: string): string | undefined;
  /** LDM key -> diffusers key, or undefined for keys the map does not know. */
  fromLdm(key: string): string | undefined;
}

/** Where each component lives in a single-file checkpoint. */
export const LDM_PREFIX = {
  unet: 'model.diffusion_model.',
  textEncoder: 'cond_stage_model.transformer.',
  vae: 'first_stage_model.',
} as const;

type LeafPairs = readonly (readonly [diffusers: string, ldm: string])[];

/** One module: its diffusers prefix, its LDM prefix, and (when they differ) its parameters' names. */
interface ModuleRule {
  readonly d: string;
  readonly l: string;
  /** When set, only these leaves exist and they are renamed; otherwise the rest of the key is kept. */
  readonly leaves?: LeafPairs;
}

const UNET_RESNET_LEAVES: LeafPairs = [
  ['norm1', 'in_layers.0'],
  ['conv1', 'in_layers.2'],
  ['time_emb_proj', 'emb_layers.1'],
  ['norm2', 'out_layers.0'],
  ['conv2', 'out_layers.3'],
  ['conv_shortcut', 'skip_connection'],
];

const VAE_RESNET_LEAVES: LeafPairs = [
  ['norm1', 'norm1'],
  ['conv1', 'conv1'],
  ['norm2', 'norm2'],
  ['conv2', 'conv2'],
  ['conv_shortcut', 'nin_shortcut'],
];

/** The VAE mid-block attention: linears in diffusers, 1x1 convs in LDM. */
const VAE_ATTENTION_LEAVES: LeafPairs = [
  ['group_norm', 'norm'],
  ['to_q', 'q'],
  ['to_k', 'k'],
  ['to_v', 'v'],
  ['to_out.0', 'proj_out'],
];

function mapFromRules(rules: readonly ModuleRule[]): LdmKeyMap {
  const byD = new Map(rules.map((r) => [r.d, r]));
  const byL = new Map(rules.map((r) => [r.l, r]));
  const translate = (key: string, index: Map<string, ModuleRule>, forward: boolean): string | undefined => {
    // Longest module prefix first; the key must go on past it (a parameter name).
    for (let end = key.lastIndexOf('.'); end > 0; end = key.lastIndexOf('.', end - 1)) {
      const rule = index.get(key.slice(0, end));
      if (!rule) continue;
      const rest = key.slice(end + 1);
      const target = forward ? rule.l : rule.d;
      if (!rule.leaves) return `${target}.${rest}`;
      for (const [d, l] of rule.leaves) {
        const [from, to] = forward ? [d, l] : [l, d];
        if (rest === from || rest.startsWith(`${from}.`)) return `${target}.${to}${rest.slice(from.length)}`;
      }
      return undefined;
    }
    return undefined;
  };
  return {
    toLdm: (key) => translate(key, byD, true),
    fromLdm: (key) => translate(key, byL, false),
  };
}

/** The config fields the UNet key map depends on. */
export interface UNetLayout {
  readonly block_out_channels: readonly number[];
  readonly layers_per_block: number;
  readonly down_block_types: readonly string[];
  readonly up_block_types: readonly string[];
}

/**
 * The UNet map, generated from the config: with n levels and L layers per
 * block, down level i's resnet/attention j is `input_blocks.{1 + i(L+1) + j}.{0,1}`
 * and its downsampler `input_blocks.{(i+1)(L+1)}.0.op`; up level i's
 * resnet/attention j (L+1 of them) is `output_blocks.{i(L+1) + j}.{0,1}` and
 * its upsampler sits in the level's last output block after the resnet (and
 * the attention, when there is one): `.1.conv` or `.2.conv`.
 */
export function ldmUNetKeyMap(cfg: UNetLayout): LdmKeyMap {
  const P = LDM_PREFIX.unet;
  const n = cfg.block_out_channels.length;
  const L = cfg.layers_per_block;
  const rules: ModuleRule[] = [
    { d: 'conv_in', l: `${P}input_blocks.0.0` },
    { d: 'time_embedding.linear_1', l: `${P}time_embed.0` },
    { d: 'time_embedding.linear_2', l: `${P}time_embed.2` },
    { d: 'conv_norm_out', l: `${P}out.0` },
    { d: 'conv_out', l: `${P}out.2` },
    { d: 'mid_block.resnets.0', l: `${P}middle_block.0`, leaves: UNET_RESNET_LEAVES },
    { d: 'mid_block.attentions.0', l: `${P}middle_block.1` },
    { d: 'mid_block.resnets.1', l: `${P}middle_block.2`, leaves: UNET_RESNET_LEAVES },
  ];
  for (let i = 0; i < n; i++) {
    const attn = String(cfg.down_block_types[i]).startsWith('CrossAttn');
    for (let j = 0; j < L; j++) {
      const k = 1 + i * (L + 1) + j;
      rules.push({ d: `down_blocks.${i}.resnets.${j}`, l: `${P}input_blocks.${k}.0`, leaves: UNET_RESNET_LEAVES });
      if (attn) rules.push({ d: `down_blocks.${i}.attentions.${j}`, l: `${P}input_blocks.${k}.1` });
    }
    if (i < n - 1) rules.push({ d: `down_blocks.${i}.downsamplers.0.conv`, l: `${P}input_blocks.${(i + 1) * (L + 1)}.0.op` });
  }
  for (let i = 0; i < n; i++) {
    const attn = String(cfg.up_block_types[i]).startsWith('CrossAttn');
    for (let j = 0; j <= L; j++) {
      const k = i * (L + 1) + j;
      rules.push({ d: `up_blocks.${i}.resnets.${j}`, l: `${P}output_blocks.${k}.0`, leaves: UNET_RESNET_LEAVES });
      if (attn) rules.push({ d: `up_blocks.${i}.attentions.${j}`, l: `${P}output_blocks.${k}.1` });
    }
    if (i < n - 1) rules.push({ d: `up_blocks.${i}.upsamplers.0`, l: `${P}output_blocks.${i * (L + 1) + L}.${attn ? 2 : 1}` });
  }
  return mapFromRules(rules);
}

/** The config fields the VAE key map depends on. */
export interface VaeLayout {
  readonly block_out_channels: readonly number[];
  readonly layers_per_block: number;
}

/**
 * The VAE map: encoder level i is `encoder.down.{i}` (L resnets `block.{j}`,
 * `downsample.conv` on all but the last); decoder up level i is
 * `decoder.up.{n-1-i}` (LDM numbers them from the lowest resolution's
 * opposite end: L+1 resnets, `upsample.conv` on all but diffusers' last).
 */
export function ldmVaeKeyMap(cfg: VaeLayout): LdmKeyMap {
  const P = LDM_PREFIX.vae;
  const n = cfg.block_out_channels.length;
  const L = cfg.layers_per_block;
  const rules: ModuleRule[] = [
    { d: 'quant_conv', l: `${P}quant_conv` },
    { d: 'post_quant_conv', l: `${P}post_quant_conv` },
  ];
  for (const part of ['encoder', 'decoder'] as const) {
    rules.push(
      { d: `${part}.conv_in`, l: `${P}${part}.conv_in` },
      { d: `${part}.conv_norm_out`, l: `${P}${part}.norm_out` },
      { d: `${part}.conv_out`, l: `${P}${part}.conv_out` },
      { d: `${part}.mid_block.resnets.0`, l: `${P}${part}.mid.block_1`, leaves: VAE_RESNET_LEAVES },
      { d: `${part}.mid_block.attentions.0`, l: `${P}${part}.mid.attn_1`, leaves: VAE_ATTENTION_LEAVES },
      { d: `${part}.mid_block.resnets.1`, l: `${P}${part}.mid.block_2`, leaves: VAE_RESNET_LEAVES },
    );
  }
  for (let i = 0; i < n; i++) {
    for (let j = 0; j < L; j++) rules.push({ d: `encoder.down_blocks.${i}.resnets.${j}`, l: `${P}encoder.down.${i}.block.${j}`, leaves: VAE_RESNET_LEAVES });
    if (i < n - 1) rules.push({ d: `encoder.down_blocks.${i}.downsamplers.0.conv`, l: `${P}encoder.down.${i}.downsample.conv` });
    const u = n - 1 - i;
    for (let j = 0; j <= L; j++) rules.push({ d: `decoder.up_blocks.${i}.resnets.${j}`, l: `${P}decoder.up.${u}.block.${j}`, leaves: VAE_RESNET_LEAVES });
    if (i < n - 1) rules.push({ d: `decoder.up_blocks.${i}.upsamplers.0.conv`, l: `${P}decoder.up.${u}.upsample.conv` });
  }
  return mapFromRules(rules);
}

/**
 * The text encoder map: `cond_stage_model.transformer.` + the transformers
 * names. `textModelLevel` false: the checkpoint omits the `text_model.` level
 * (`cond_stage_model.transformer.encoder.layers.0...`).
 */
export function ldmTextEncoderKeyMap(textModelLevel: boolean): LdmKeyMap {
  const P = LDM_PREFIX.textEncoder;
  return mapFromRules([{ d: 'text_model', l: textModelLevel ? `${P}text_model` : P.slice(0, -1) }]);
}

// ---------------------------------------------------------------- the opened model

export type ModelLayoutKind = 'diffusers' | 'single-file';

export interface ModelComponent<C extends JsonObject> {
  /** The component's config.json (diffusers folder), or the SD 1.x config with shapes inferred (single file). */
  readonly config: C;
  /** diffusers/transformers key -> where its tensor lies. */
  readonly resolve: KeyResolver;
  /** Every key of the component present in its files, in diffusers naming. */
  keys(): string[];
  readonly files: readonly SafetensorsFile[];
}

export interface OpenedModel {
  /** The folder or file that was opened (resolved to an absolute path). */
  readonly path: string;
  readonly layout: ModelLayoutKind;
  readonly unet: ModelComponent<UNetConfigJson>;
  readonly textEncoder: ModelComponent<ClipTextConfigJson>;
  readonly vae: ModelComponent<VaeConfigJson>;
  /** A diffusers `tokenizer/` folder (vocab.json, merges.txt), or null: use the standard CLIP vocabulary. */
  readonly tokenizerDir: string | null;
  readonly schedulerConfig: SchedulerConfigJson;
  /**
   * Single file: the keys no component uses (`model_ema.*`, schedule
   * buffers, VAE loss weights...), in file order. Always empty for a folder.
   */
  readonly extraKeys: readonly string[];
  /** `quickHash` of the model's files (computed on first call, then cached). */
  hash(): string;
  /** Closes every file; resolvers must not be read from afterwards. */
  close(): void;
}

export interface OpenModelOptions {
  /**
   * Config keys that override what the folder says or what was inferred from
   * a single file (shallow merge). Shapes do not tell the number of attention
   * heads or norm groups, so a single-file model that differs from SD 1.x
   * there needs them given here.
   */
  configs?: {
    unet?: JsonObject;
    textEncoder?: JsonObject;
    vae?: JsonObject;
    scheduler?: JsonObject;
  };
}

/**
 * Opens a diffusers folder (or its model_index.json) or a single-file
 * `.safetensors` checkpoint. Throws UnsupportedModelError for other
 * architectures, PickleCheckpointError for pickles, ModelIncompleteError for
 * missing parts, FileFormatError for unreadable files.
 */
export function openModel(modelPath: string, options: OpenModelOptions = {}): OpenedModel {
  const abs = path.resolve(modelPath);
  let st: Stats;
  try {
    st = statSync(abs);
  } catch (e) {
    throw new FileFormatError(abs, `${abs}: not found (${(e as NodeJS.ErrnoException).code ?? String(e)}); pick a diffusers model folder or a .safetensors checkpoint file`, { cause: e });
  }
  if (st.isDirectory()) return openDiffusersFolder(abs, options);
  if (path.basename(abs) === 'model_index.json') return openDiffusersFolder(path.dirname(abs), options);
  const ext = path.extname(abs).toLowerCase();
  if (['.ckpt', '.pt', '.pth', '.bin', '.pkl', '.pickle'].includes(ext)) throw pickleSingleFileError(abs);
  // Trust the content over the name: a renamed pickle is still a pickle.
  if (looksLikeSafetensors(abs)) return openSingleFile(abs, options);
  if (looksLikePickle(abs)) throw pickleSingleFileError(abs);
  if (ext === '.safetensors') return openSingleFile(abs, options); // reports what is wrong with the header
  throw new FileFormatError(abs, `${abs}: not a model Lethe can open (${ext || 'no extension'}). ${SUPPORTED}`);
}

/** torch.save writes a zip (PK\x03\x04) or, before 1.6, a bare pickle (protocol 2: \x80\x02). */
function looksLikePickle(file: string): boolean {
  const head = readHead(file, 4);
  return (head[0] === 0x50 && head[1] === 0x4b && head[2] === 0x03 && head[3] === 0x04) || (head[0] === 0x80 && head[1] >= 2 && head[1] <= 5);
}

/** An 8-byte header length below 4 GiB, then `{`. */
function looksLikeSafetensors(file: string): boolean {
  const head = readHead(file, 9);
  return head.length === 9 && head[8] === 0x7b && head.readUInt32LE(4) === 0;
}

/** The first `n` bytes (fewer for a short file, none when unreadable: the caller's open reports why). */
function readHead(file: string, n: number): Buffer {
  let fd: number;
  try {
    fd = openSync(file, 'r');
  } catch {
    return Buffer.alloc(0);
  }
  try {
    const buf = Buffer.alloc(n);
    const got = readSync(fd, buf, 0, n, 0);
    return buf.subarray(0, got);
  } finally {
    closeSync(fd);
  }
}

// ---------------------------------------------------------------- quick hash

const HASH_SPAN = 1 << 20;

/**
 * A fast identity for caches, NOT the file's sha256: sha256 over a version
 * tag, then per file its role name (`''` for a single file, the path inside
 * the folder otherwise), its size, its first MiB and its last MiB. For a
 * safetensors file the first MiB holds the header (every name, dtype, shape
 * and offset) and the first tensors' bytes, so different models, precisions
 * and fine-tunes (which change nearly every tensor) hash differently while a
 * 4 GB checkpoint is hashed in milliseconds. Edits that keep the size and
 * touch only tensors in the middle of a file (e.g. cross-attention weights
 * rewritten in place) are NOT seen: key caches of edited weights by the edit,
 * not by this hash. Moving or renaming a single file keeps its hash.
 */
export function quickHash(files: readonly { role: string; path: string }[]): string {
  const h = createHash('sha256');
  h.update('lethe-quickhash/1\0');
  for (const { role, path: file } of files) {
    const fd = openSync(file, 'r');
    try {
      const size = fstatSync(fd).size;
      h.update(`${role}\0${size}\0`);
      const head = Buffer.alloc(Math.min(HASH_SPAN, size));
      readFullyAt(fd, head, 0);
      h.update(head);
      const tail = Buffer.alloc(Math.min(HASH_SPAN, size));
      readFullyAt(fd, tail, size - tail.length);
      h.update(tail);
    } finally {
      closeSync(fd);
    }
  }
  return h.digest('hex');
}

/** `quickHash` of one file on its own (what `hash()` of a single-file model returns). */
export function quickFileHash(file: string): string {
  return quickHash([{ role: '', path: file }]);
}

function readFullyAt(fd: number, into: Buffer, position: number): void {
  for (let done = 0; done < into.length;) {
    const n = readSync(fd, into, done, into.length - done, position + done);
    if (n === 0) throw new Error('file shrank while being hashed');
    done += n;
  }
}

// ---------------------------------------------------------------- diffusers folder

interface FolderWeights {
  files: SafetensorsFile[];
  /** Every file read, relative to the model folder (weights, shard index). */
  used: string[];
}

function openDiffusersFolder(dir: string, options: OpenModelOptions): OpenedModel {
  const rel = (p: string): string => path.join(dir, p);
  const indexPath = rel('model_index.json');
  if (!existsSync(indexPath)) {
    const loose = safeList(dir).filter((f) => f.toLowerCase().endsWith('.safetensors'));
    const hint = existsSync(rel('config.json'))
      ? '; this looks like one component folder (unet/, vae/...) of a diffusers model: open the folder above it'
      : loose.length
        ? `; it holds ${loose.slice(0, 3).join(', ')}${loose.length > 3 ? '...' : ''}: open one of those files instead`
        : existsSync(rel('unet')) ? '; the folder looks like an incomplete diffusers download: download model_index.json too' : '';
    throw new ModelIncompleteError(dir, ['model_index.json'], `${dir}: not a diffusers model folder: model_index.json is missing${hint}. ${SUPPORTED}`);
  }
  const index = readJson(indexPath);
  checkPipelineClass(dir, index);

  const opened: SafetensorsFile[] = [];
  try {
    if (!existsSync(rel('unet')) && existsSync(rel('transformer'))) {
      throw new UnsupportedModelError(dir, 'other', `${dir}: the model has a transformer/ instead of a unet/ (a diffusion-transformer model such as SD 3 or Flux). ${SUPPORTED}`);
    }
    const unetConfig = readComponentConfig(dir, 'unet/config.json') as UNetConfigJson;
    checkUNetConfig(dir, unetConfig, 'unet/config.json');
    const textConfig = readComponentConfig(dir, 'text_encoder/config.json') as ClipTextConfigJson;
    checkTextConfig(dir, textConfig);
    const vaeConfig = readComponentConfig(dir, 'vae/config.json') as VaeConfigJson;
    if (vaeConfig._class_name !== undefined && vaeConfig._class_name !== 'AutoencoderKL') {
      throw new UnsupportedModelError(dir, 'other', `${dir}: the VAE is a ${String(vaeConfig._class_name)}, not an AutoencoderKL (vae/config.json). ${SUPPORTED}`);
    }

    const unetW = openFolderWeights(dir, 'unet', 'diffusion_pytorch_model', opened);
    const textW = openFolderWeights(dir, 'text_encoder', 'model', opened);
    const vaeW = openFolderWeights(dir, 'vae', 'diffusion_pytorch_model', opened);

    const listed = (name: string): boolean => Array.isArray(index[name]) && (index[name] as unknown[])[0] != null;
    let tokenizerDir: string | null = null;
    if (listed('tokenizer') || existsSync(rel('tokenizer'))) {
      const missing = ['tokenizer/vocab.json', 'tokenizer/merges.txt'].filter((f) => !existsSync(rel(f)));
      if (missing.length) throw new ModelIncompleteError(dir, missing, `${dir}: ${missing.join(' and ')} missing; the tokenizer folder is incomplete: download it again`);
      tokenizerDir = rel('tokenizer');
    }
    let schedulerConfig = copy(SD1_SCHEDULER_CONFIG_JSON);
    if (listed('scheduler') || existsSync(rel('scheduler'))) schedulerConfig = readComponentConfig(dir, 'scheduler/scheduler_config.json') as SchedulerConfigJson;

    const hashFiles = [
      'model_index.json', 'unet/config.json', ...unetW.used, 'text_encoder/config.json', ...textW.used, 'vae/config.json', ...vaeW.used,
      ...(tokenizerDir ? ['tokenizer/vocab.json', 'tokenizer/merges.txt'] : []),
      ...(existsSync(rel('scheduler/scheduler_config.json')) ? ['scheduler/scheduler_config.json'] : []),
    ].map((role) => ({ role, path: rel(role) }));

    const vaeResolve = legacyVaeResolver(unionResolver(vaeW.files));
    const o = options.configs ?? {};
    return makeModel({
      path: dir,
      layout: 'diffusers',
      unet: folderComponent({ ...unetConfig, ...o.unet }, unionResolver(unetW.files), unetW.files, (k) => k),
      textEncoder: folderComponent({ ...textConfig, ...o.textEncoder }, unionResolver(textW.files), textW.files, (k) => k),
      vae: folderComponent({ ...vaeConfig, ...o.vae }, vaeResolve, vaeW.files, modernVaeName),
      tokenizerDir,
      schedulerConfig: { ...schedulerConfig, ...o.scheduler },
      extraKeys: [],
      files: opened,
      hashFiles,
    });
  } catch (e) {
    for (const f of opened) f.close();
    throw e;
  }
}

function safeList(dir: string): string[] {
  try {
    return readdirSync(dir).sort();
  } catch {
    return [];
  }
}

function readJson(file: string): JsonObject {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new FileFormatError(file, `${file}: cannot read (${(e as NodeJS.ErrnoException).code ?? String(e)})`, { cause: e });
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new FileFormatError(file, `${file}: not valid JSON (${(e as Error).message}); download it again`, { cause: e });
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new FileFormatError(file, `${file}: expected a JSON object`);
  return json as JsonObject;
}

function readComponentConfig(dir: string, relPath: string): JsonObject {
  const file = path.join(dir, relPath);
  if (!existsSync(file)) {
    const folder = relPath.split('/')[0];
    const why = existsSync(path.join(dir, folder)) ? `the ${folder}/ folder has no ${path.basename(relPath)}` : `the ${folder}/ folder is missing`;
    throw new ModelIncompleteError(dir, [relPath], `${dir}: ${relPath} is missing (${why}); the diffusers folder is incomplete: download it again`);
  }
  return readJson(file);
}

/**
 * The component's safetensors weights: plain, then the fp16 variant, each
 * single or sharded (`.safetensors.index.json`). Full precision wins when
 * both are present. Pickle `.bin` weights are refused by name.
 */
function openFolderWeights(dir: string, component: string, stem: string, opened: SafetensorsFile[]): FolderWeights {
  const sub = path.join(dir, component);
  for (const variant of ['', '.fp16']) {
    const single = `${component}/${stem}${variant}.safetensors`;
    if (existsSync(path.join(dir, single))) {
      const f = openSafetensors(path.join(dir, single));
      opened.push(f);
      return { files: [f], used: [single] };
    }
    const indexRel = `${single}.index.json`;
    if (existsSync(path.join(dir, indexRel))) {
      const weightMap = readJson(path.join(dir, indexRel)).weight_map;
      if (typeof weightMap !== 'object' || weightMap === null) throw new FileFormatError(path.join(dir, indexRel), `${path.join(dir, indexRel)}: no weight_map object; download it again`);
      const shards = [...new Set(Object.values(weightMap as Record<string, unknown>).map(String))].sort();
      const missing = shards.filter((s) => !existsSync(path.join(sub, s))).map((s) => `${component}/${s}`);
      if (missing.length) throw new ModelIncompleteError(dir, missing, `${dir}: ${missing.join(', ')} missing (listed in ${indexRel}); the download is incomplete`);
      const files = shards.map((s) => {
        const f = openSafetensors(path.join(sub, s));
        opened.push(f);
        return f;
      });
      return { files, used: [indexRel, ...shards.map((s) => `${component}/${s}`)] };
    }
  }
  const pickles = [stem, 'pytorch_model', 'diffusion_pytorch_model']
    .flatMap((s) => [`${s}.bin`, `${s}.fp16.bin`, `${s}.bin.index.json`, `${s}.ckpt`])
    .find((f) => existsSync(path.join(sub, f)));
  if (pickles) throw pickleFolderError(dir, path.join(sub, pickles));
  const want = `${component}/${stem}.safetensors`;
  throw new ModelIncompleteError(dir, [want], `${dir}: ${want} is missing (nor is there an .fp16 variant or a sharded index); the diffusers folder is incomplete: download it again`);
}

function unionResolver(files: readonly SafetensorsFile[]): KeyResolver {
  return (name) => {
    for (const file of files) if (file.tensors.has(name)) return { file, key: name };
    return undefined;
  };
}

/** diffusers < 0.14 named the VAE attention query/key/value/proj_attn. */
const LEGACY_VAE_ATTENTION: readonly [string, string][] = [
  ['.to_q.', '.query.'],
  ['.to_k.', '.key.'],
  ['.to_v.', '.value.'],
  ['.to_out.0.', '.proj_attn.'],
];

function legacyVaeResolver(resolve: KeyResolver): KeyResolver {
  return (name) => {
    const hit = resolve(name);
    if (hit || !name.includes('.attentions.')) return hit;
    const legacy = LEGACY_VAE_ATTENTION.find(([now]) => name.includes(now));
    return legacy ? resolve(name.replace(legacy[0], legacy[1])) : undefined;
  };
}

function modernVaeName(key: string): string {
  if (!key.includes('.attentions.')) return key;
  const legacy = LEGACY_VAE_ATTENTION.find(([, old]) => key.includes(old));
  return legacy ? key.replace(legacy[1], legacy[0]) : key;
}

function folderComponent<C extends JsonObject>(config: C, resolve: KeyResolver, files: SafetensorsFile[], rename: (k: string) => string): ModelComponent<C> {
  return { config, resolve, files, keys: () => files.flatMap((f) => [...f.tensors.keys()].map(rename)) };
}

/** Refusals by the pipeline class in model_index.json. */
function checkPipelineClass(dir: string, index: JsonObject): void {
  const cls = typeof index._class_name === 'string' ? index._class_name : '';
  const refuse = (arch: ModelArchitecture, what: string): never => {
    throw new UnsupportedModelError(dir, arch, `${dir}: this is ${what} (model_index.json: ${cls || 'a second text encoder'}). ${SUPPORTED}`);
  };
  if (/XL/.test(cls) || (Array.isArray(index.text_encoder_2) && index.text_encoder_2[0] != null)) refuse('SDXL', 'an SDXL model');
  if (/StableDiffusion3/.test(cls)) refuse('SD 3', 'a Stable Diffusion 3 model');
  if (/^Flux/.test(cls)) refuse('Flux', 'a Flux model');
  if (/Inpaint/.test(cls)) refuse('SD 1.x inpainting', 'an inpainting model');
  if (/InstructPix2Pix/.test(cls)) refuse('InstructPix2Pix', 'an InstructPix2Pix model');
  if (/Upscale|Depth2Img|UnCLIP/.test(cls)) refuse('SD 2.x', `an SD 2.x-based ${cls}`);
}

/** Refusals by the UNet config (other families share the class name). */
function checkUNetConfig(where: string, cfg: UNetConfigJson, source: string): void {
  const refuse = (arch: ModelArchitecture, what: string): never => {
    throw new UnsupportedModelError(where, arch, `${where}: this is ${what} (${source}). ${SUPPORTED}`);
  };
  const cls = cfg._class_name;
  if (cls !== undefined && cls !== 'UNet2DConditionModel') {
    if (/SD3/.test(String(cls))) refuse('SD 3', `a Stable Diffusion 3 transformer (${String(cls)})`);
    if (/Flux/.test(String(cls))) refuse('Flux', `a Flux transformer (${String(cls)})`);
    refuse('other', `a ${String(cls)}, not a UNet2DConditionModel`);
  }
  if (cfg.addition_embed_type === 'text_time') refuse('SDXL', 'an SDXL UNet (addition_embed_type "text_time")');
  if (cfg.addition_embed_type != null) refuse('other', `a UNet with added conditioning (addition_embed_type ${JSON.stringify(cfg.addition_embed_type)})`);
  if (cfg.cross_attention_dim === 2048 || cfg.cross_attention_dim === 1280) refuse('SDXL', `an SDXL UNet (cross_attention_dim ${cfg.cross_attention_dim})`);
  if (cfg.cross_attention_dim === 1024) refuse('SD 2.x', 'an SD 2.x UNet (cross_attention_dim 1024: an OpenCLIP ViT-H text encoder)');
  if (cfg.use_linear_projection === true) refuse('SD 2.x', 'an SD 2.x UNet (use_linear_projection: linear proj_in/proj_out)');
  if (Array.isArray(cfg.attention_head_dim)) refuse('SD 2.x', 'an SD 2.x UNet (per-block attention_head_dim)');
  if (cfg.in_channels === 9) refuse('SD 1.x inpainting', 'an inpainting UNet: conv_in takes 9 channels (latents, mask, masked image) where SD 1.x text-to-image takes 4; use the base model it was made from');
  if (cfg.in_channels === 8) refuse('InstructPix2Pix', 'an InstructPix2Pix UNet: conv_in takes 8 channels (latents and the image to edit) where SD 1.x takes 4');
}

function checkTextConfig(dir: string, cfg: ClipTextConfigJson): void {
  if (cfg.hidden_size === 1024) {
    throw new UnsupportedModelError(dir, 'SD 2.x', `${dir}: this is an SD 2.x text encoder (OpenCLIP ViT-H, hidden_size 1024, in text_encoder/config.json). ${SUPPORTED}`);
  }
}

// ---------------------------------------------------------------- single file

function openSingleFile(file: string, options: OpenModelOptions): OpenedModel {
  const st = openSafetensors(file);
  try {
    const names = [...st.tensors.keys()];
    detectForeign(file, names);

    const unetConfig = inferUNetConfig(file, st);
    const textLevel = st.tensors.has(`${LDM_PREFIX.textEncoder}text_model.embeddings.token_embedding.weight`);
    const textConfig = inferTextConfig(file, st, textLevel);
    const vaeConfig = inferVaeConfig(file, st);
    if (unetConfig.cross_attention_dim !== textConfig.hidden_size) {
      throw new FileFormatError(file, `${file}: the UNet's cross-attention takes ${unetConfig.cross_attention_dim}-wide text features but the text encoder makes ${textConfig.hidden_size}; the checkpoint mixes parts of different models`);
    }
    const o = options.configs ?? {};
    const unet = { ...unetConfig, ...o.unet } as UNetConfigJson;
    const text = { ...textConfig, ...o.textEncoder } as ClipTextConfigJson;
    const vae = { ...vaeConfig, ...o.vae } as VaeConfigJson;

    const maps = {
      unet: ldmUNetKeyMap(layoutOf(unet, unetConfig)),
      textEncoder: ldmTextEncoderKeyMap(textLevel),
      vae: ldmVaeKeyMap(layoutOf(vae, vaeConfig)),
    };
    const component = <C extends JsonObject>(config: C, map: LdmKeyMap): ModelComponent<C> => ({
      config,
      files: [st],
      resolve: (name) => {
        const key = map.toLdm(name);
        return key !== undefined && st.tensors.has(key) ? { file: st, key } : undefined;
      },
      keys: () => names.map((k) => map.fromLdm(k)).filter((k): k is string => k !== undefined),
    });
    const extraKeys = names.filter((k) => [maps.unet, maps.textEncoder, maps.vae].every((m) => m.fromLdm(k) === undefined));

    return makeModel({
      path: file,
      layout: 'single-file',
      unet: component(unet, maps.unet),
      textEncoder: component(text, maps.textEncoder),
      vae: component(vae, maps.vae),
      tokenizerDir: null,
      schedulerConfig: { ...copy(SD1_SCHEDULER_CONFIG_JSON), ...o.scheduler },
      extraKeys,
      files: [st],
      hashFiles: [{ role: '', path: file }],
    });
  } catch (e) {
    st.close();
    throw e;
  }
}

/** The map's layout from the final config, falling back to the inferred one for fields an override broke. */
function layoutOf<T extends UNetLayout | VaeLayout>(cfg: JsonObject, inferred: T): T {
  const merged = { ...inferred } as Record<string, unknown>;
  for (const k of Object.keys(inferred)) if (cfg[k] !== undefined) merged[k] = cfg[k];
  const ok = Array.isArray(merged.block_out_channels) && Number.isInteger(merged.layers_per_block);
  return (ok ? merged : inferred) as T;
}

/** Refusals by key names: other families, partial models, adapters, non-models. */
function detectForeign(file: string, names: readonly string[]): void {
  const has = (re: RegExp): string | undefined => names.find((k) => re.test(k));
  const refuse = (arch: ModelArchitecture, what: string, evidence: string | undefined): never => {
    throw new UnsupportedModelError(file, arch, `${file}: this is ${what}${evidence ? ` (it has "${evidence}")` : ''}. ${SUPPORTED}`);
  };
  let k: string | undefined;
  if ((k = has(/^(model\.diffusion_model\.)?joint_blocks\./))) refuse('SD 3', 'a Stable Diffusion 3 checkpoint (MMDiT)', k);
  if ((k = has(/^(model\.diffusion_model\.)?(double_blocks|single_blocks)\./) ?? has(/^single_transformer_blocks\./))) refuse('Flux', 'a Flux checkpoint', k);
  if ((k = has(/^context_embedder\./)) && has(/^transformer_blocks\./)) refuse('SD 3', 'a Stable Diffusion 3 transformer in diffusers naming', k);
  if ((k = has(/^conditioner\.embedders\./) ?? has(/^model\.diffusion_model\.label_emb\./) ?? has(/^add_embedding\./))) refuse('SDXL', 'an SDXL checkpoint', k);
  if ((k = has(/^cond_stage_model\.model\./))) refuse('SD 2.x', 'an SD 2.x checkpoint (its text encoder is OpenCLIP ViT-H)', k);
  if ((k = has(/(^|[._])lora(_|\.|$)|lora_(up|down|A|B)\b/i))) refuse('LoRA', 'a LoRA (a small add-on for a model), not a whole model; open the base model instead', k);
  if ((k = has(/^(string_to_param|emb_params|clip_l|clip_g)(\.|$)/))) refuse('textual inversion embedding', 'a textual-inversion embedding, not a whole model', k);

  const unetKey = `${LDM_PREFIX.unet}input_blocks.0.0.weight`;
  if (!names.includes(unetKey)) {
    const partial = (what: string, key: string | undefined): never => {
      throw new ModelIncompleteError(file, ['UNet', 'text encoder', 'VAE'].filter((p) => p !== what), `${file}: this file holds only ${what === 'UNet' ? 'a' : 'the'} ${what}${key ? ` (it has "${key}")` : ''}, not a whole model. Lethe needs the UNet, the text encoder and the VAE: open a full single-file checkpoint, or the diffusers folder (the one with model_index.json) this part belongs to`);
    };
    if ((k = has(/^conv_in\.weight$/)) && has(/^down_blocks\./)) partial('UNet', k);
    if ((k = has(/^(cond_stage_model\.transformer\.)?(text_model\.)?embeddings\.token_embedding\.weight$/))) partial('text encoder', k);
    if ((k = has(/^(first_stage_model\.)?(encoder\.down\.|encoder\.down_blocks\.|decoder\.up_blocks\.|decoder\.up\.)/))) partial('VAE', k);
    throw new UnsupportedModelError(file, 'not a diffusion model', `${file}: this is not a diffusion model checkpoint: it has no UNet ("${unetKey}")${names.length ? `; its first tensors are ${names.slice(0, 3).map((n) => `"${n}"`).join(', ')}` : ' and no tensors at all'}. ${SUPPORTED}`);
  }
  const missing = [
    ...(has(/^cond_stage_model\.transformer\./) ? [] : ['text encoder (cond_stage_model.transformer.*)']),
    ...(has(/^first_stage_model\./) ? [] : ['VAE (first_stage_model.*)']),
  ];
  if (missing.length) {
    throw new ModelIncompleteError(file, missing, `${file}: the checkpoint has a UNet but no ${missing.join(' and no ')}; Lethe needs all three parts of an SD 1.x model. Download the full checkpoint (not a UNet-only or pruned variant)`);
  }
}

/** The indices that follow `prefix` in the file's key names (`prefix{i}.`). */
function indices(st: SafetensorsFile, prefix: string): number[] {
  const found = new Set<number>();
  for (const k of st.tensors.keys()) {
    if (!k.startsWith(prefix)) continue;
    const m = /^(\d+)\./.exec(k.slice(prefix.length));
    if (m) found.add(Number(m[1]));
  }
  return [...found].sort((a, b) => a - b);
}

function shapeOf(file: string, st: SafetensorsFile, key: string, what: string): readonly number[] {
  const t = st.tensors.get(key);
  if (!t) throw new ModelIncompleteError(file, [key], `${file}: "${key}" (${what}) is missing; the checkpoint is incomplete or not SD 1.x-style`);
  return t.shape;
}

/** The largest divisor of every channel count that divides `preferred` (the SD 1.x value when it fits). */
function fitDivisor(preferred: number, channels: readonly number[]): number {
  const gcd = (a: number, b: number): number => (b === 0 ? a : gcd(b, a % b));
  return channels.reduce((g, c) => gcd(g, c), preferred);
}

/**
 * The SD 1.x UNet config with what the shapes tell: levels, layers per
 * block, channels, block types, in/out channels, cross-attention width.
 * Heads and norm groups are not in the shapes: SD 1.x's 8 and 32, or the
 * largest divisor of the channels below them.
 */
function inferUNetConfig(file: string, st: SafetensorsFile): UNetConfigJson & UNetLayout {
  const P = LDM_PREFIX.unet;
  const unsupported = (arch: ModelArchitecture, what: string): never => {
    throw new UnsupportedModelError(file, arch, `${file}: this is ${what}. ${SUPPORTED}`);
  };
  const convIn = shapeOf(file, st, `${P}input_blocks.0.0.weight`, 'the UNet conv_in');
  if (convIn.length !== 4) unsupported('other', `not an SD 1.x UNet (conv_in weight is [${convIn.join(', ')}], not a 2-D convolution kernel)`);
  const inChannels = convIn[1];
  if (inChannels === 9) unsupported('SD 1.x inpainting', 'an inpainting model: its UNet conv_in takes 9 channels (latents, mask, masked image) where SD 1.x text-to-image takes 4; use the base model it was made from');
  if (inChannels === 8) unsupported('InstructPix2Pix', 'an InstructPix2Pix model: its UNet conv_in takes 8 channels (latents and the image to edit) where SD 1.x takes 4');

  const inputs = indices(st, `${P}input_blocks.`);
  const downs = inputs.filter((k) => st.tensors.has(`${P}input_blocks.${k}.0.op.weight`));
  const n = downs.length + 1;
  const nIn = inputs.length ? inputs[inputs.length - 1] + 1 : 0;
  const L = nIn / n - 1;
  const outputs = indices(st, `${P}output_blocks.`);
  const regular = Number.isInteger(L) && L >= 1
    && downs.every((k, i) => k === (i + 1) * (L + 1))
    && inputs.length === nIn
    && outputs.length === n * (L + 1) && outputs[outputs.length - 1] === n * (L + 1) - 1;
  if (!regular) {
    unsupported('other', `not an SD 1.x-style UNet: ${nIn} input blocks with ${downs.length} downsamplers and ${outputs.length} output blocks do not form levels of equal depth`);
  }

  const blockOut: number[] = [];
  const down: string[] = [];
  const up: string[] = [];
  for (let i = 0; i < n; i++) {
    const k = 1 + i * (L + 1);
    blockOut.push(shapeOf(file, st, `${P}input_blocks.${k}.0.out_layers.3.weight`, `the level ${i} resnet`)[0]);
    down.push(st.tensors.has(`${P}input_blocks.${k}.1.proj_in.weight`) ? 'CrossAttnDownBlock2D' : 'DownBlock2D');
    up.push(st.tensors.has(`${P}output_blocks.${i * (L + 1)}.1.proj_in.weight`) ? 'CrossAttnUpBlock2D' : 'UpBlock2D');
  }
  if (!st.tensors.has(`${P}middle_block.1.proj_in.weight`)) unsupported('other', 'not an SD 1.x UNet: its middle block has no attention');

  let crossDim = SD1_UNET_CONFIG_JSON.cross_attention_dim as number;
  for (const [k, t] of st.tensors) {
    if (!k.startsWith(P)) continue;
    if (/\.proj_in\.weight$/.test(k) && t.shape.length === 2) unsupported('SD 2.x', `an SD 2.x-style UNet (proj_in is a linear layer, [${t.shape.join(', ')}]; SD 1.x uses a 1x1 convolution)`);
    if (/\.transformer_blocks\.[1-9]\d*\./.test(k)) unsupported('SDXL', `an SDXL-style UNet (several transformer layers per block: "${k}")`);
    if (/\.attn2\.to_k\.weight$/.test(k)) crossDim = t.shape[1];
  }
  if (crossDim === 1024) unsupported('SD 2.x', 'an SD 2.x UNet (its cross-attention takes 1024-wide OpenCLIP text features; SD 1.x takes 768)');
  if (crossDim === 2048 || crossDim === 1280) unsupported('SDXL', `an SDXL UNet (its cross-attention takes ${crossDim}-wide text features; SD 1.x takes 768)`);

  const outChannels = shapeOf(file, st, `${P}out.2.weight`, 'the UNet conv_out')[0];
  return {
    ...copy(SD1_UNET_CONFIG_JSON),
    in_channels: inChannels,
    out_channels: outChannels,
    down_block_types: down,
    up_block_types: up,
    block_out_channels: blockOut,
    layers_per_block: L,
    cross_attention_dim: crossDim,
    norm_num_groups: fitDivisor(32, blockOut),
    attention_head_dim: fitDivisor(8, blockOut),
  };
}

/**
 * The SD 1.x CLIP text config with vocabulary, width, MLP width, depth and
 * context length read off the shapes. Heads are not in the shapes: width/64
 * (CLIP's head size), else the largest divisor of the width up to 12.
 */
function inferTextConfig(file: string, st: SafetensorsFile, textLevel: boolean): ClipTextConfigJson & { hidden_size: number } {
  const P = LDM_PREFIX.textEncoder + (textLevel ? 'text_model.' : '');
  const [vocab, hidden] = shapeOf(file, st, `${P}embeddings.token_embedding.weight`, 'the text encoder token embedding');
  const [positions] = shapeOf(file, st, `${P}embeddings.position_embedding.weight`, 'the text encoder position embedding');
  const layers = indices(st, `${P}encoder.layers.`);
  if (layers.length === 0 || layers[layers.length - 1] !== layers.length - 1) {
    throw new ModelIncompleteError(file, [`${P}encoder.layers.*`], `${file}: the text encoder's layers are missing or not numbered 0..n-1; the checkpoint is incomplete`);
  }
  const [intermediate] = shapeOf(file, st, `${P}encoder.layers.0.mlp.fc1.weight`, 'the text encoder MLP');
  let heads = hidden % 64 === 0 ? hidden / 64 : 1;
  if (hidden % 64 !== 0) for (let h = 12; h >= 1; h--) if (hidden % h === 0) { heads = h; break; }
  return {
    ...copy(SD1_TEXT_ENCODER_CONFIG_JSON),
    vocab_size: vocab,
    hidden_size: hidden,
    intermediate_size: intermediate,
    num_hidden_layers: layers.length,
    num_attention_heads: heads,
    max_position_embeddings: positions,
  };
}

/** The SD 1.x VAE config with levels, depth, channels and latent width read off the shapes. */
function inferVaeConfig(file: string, st: SafetensorsFile): VaeConfigJson & VaeLayout {
  const P = LDM_PREFIX.vae;
  const levels = indices(st, `${P}encoder.down.`);
  const n = levels.length;
  const L = indices(st, `${P}encoder.down.0.block.`).length;
  const ups = indices(st, `${P}decoder.up.`);
  if (n === 0 || L === 0 || levels[n - 1] !== n - 1 || ups.length !== n || indices(st, `${P}decoder.up.0.block.`).length !== L + 1) {
    throw new UnsupportedModelError(file, 'other', `${file}: the VAE (first_stage_model) is not SD 1.x-style: ${n} encoder levels of ${L} blocks and ${ups.length} decoder levels. ${SUPPORTED}`);
  }
  const blockOut = levels.map((i) => shapeOf(file, st, `${P}encoder.down.${i}.block.0.conv1.weight`, `the VAE encoder level ${i}`)[0]);
  const inChannels = shapeOf(file, st, `${P}encoder.conv_in.weight`, 'the VAE encoder conv_in')[1];
  const latent = shapeOf(file, st, `${P}decoder.conv_in.weight`, 'the VAE decoder conv_in')[1];
  const outChannels = shapeOf(file, st, `${P}decoder.conv_out.weight`, 'the VAE decoder conv_out')[0];
  return {
    ...copy(SD1_VAE_CONFIG_JSON),
    in_channels: inChannels,
    out_channels: outChannels,
    down_block_types: blockOut.map(() => 'DownEncoderBlock2D'),
    up_block_types: blockOut.map(() => 'UpDecoderBlock2D'),
    block_out_channels: blockOut,
    layers_per_block: L,
    latent_channels: latent,
    norm_num_groups: fitDivisor(32, blockOut),
  };
}

// ---------------------------------------------------------------- assembly

interface ModelParts {
  path: string;
  layout: ModelLayoutKind;
  unet: ModelComponent<UNetConfigJson>;
  textEncoder: ModelComponent<ClipTextConfigJson>;
  vae: ModelComponent<VaeConfigJson>;
  tokenizerDir: string | null;
  schedulerConfig: SchedulerConfigJson;
  extraKeys: string[];
  files: SafetensorsFile[];
  hashFiles: { role: string; path: string }[];
}

function makeModel(p: ModelParts): OpenedModel {
  let digest: string | null = null;
  return {
    path: p.path,
    layout: p.layout,
    unet: p.unet,
    textEncoder: p.textEncoder,
    vae: p.vae,
    tokenizerDir: p.tokenizerDir,
    schedulerConfig: p.schedulerConfig,
    extraKeys: Object.freeze(p.extraKeys),
    hash: () => (digest ??= quickHash(p.hashFiles)),
    close: () => {
      for (const f of p.files) f.close();
    },
  };
}
