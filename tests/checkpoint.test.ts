import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileFormatError, LetheError } from '../core/errors.ts';
import {
  LDM_PREFIX,
  ModelIncompleteError,
  PickleCheckpointError,
  SD1_UNET_CONFIG_JSON,
  UnsupportedModelError,
  ldmTextEncoderKeyMap,
  ldmUNetKeyMap,
  ldmVaeKeyMap,
  openModel,
  quickFileHash,
  type JsonObject,
  type LdmKeyMap,
  type ModelArchitecture,
  type ModelComponent,
  type OpenedModel,
  type UNetLayout,
  type VaeLayout,
} from '../core/io/checkpoint.ts';
import { openSafetensors, writeSafetensors, type SafetensorsFile, type TensorToWrite } from '../core/io/safetensors.ts';
import { parseClipTextConfig } from '../core/nn/clip-text.ts';
import { parseUNetConfig } from '../core/nn/unet.ts';
import { parseVaeConfig } from '../core/nn/vae.ts';
import { compareOutputs, loadFixture } from '../core/parity/fixture.ts';
import { runVaeOnce } from '../core/parity/vae.ts';
import { FIXTURES_DIR, hasShared } from './helpers/shared.ts';

const SD1 = path.join(FIXTURES_DIR, 'sd1');
type Part = 'unet' | 'textEncoder' | 'vae';
const PARTS: readonly Part[] = ['unet', 'textEncoder', 'vae'];
const CASE: Record<Part, string> = { unet: 'unet-forward', textEncoder: 'clip-text', vae: 'vae-decode' };

const fixtureConfig = (part: Part): JsonObject => (JSON.parse(readFileSync(path.join(SD1, CASE[part], 'fixture.json'), 'utf8')) as { config: JsonObject }).config;
const fixtureWeights = (part: Part): string => path.join(SD1, CASE[part], 'weights.safetensors');

/** The SD 1.5 layout, for the hand-checked names below. */
const SD15: UNetLayout = {
  block_out_channels: [320, 640, 1280, 1280],
  layers_per_block: 2,
  down_block_types: SD1_UNET_CONFIG_JSON.down_block_types!,
  up_block_types: SD1_UNET_CONFIG_JSON.up_block_types!,
};

describe('LDM key maps', () => {
  // Names as they appear in runwayml/stable-diffusion-v1-5's v1-5-pruned.safetensors, written out by hand.
  const unetPairs: [string, string][] = [
    ['conv_in.weight', 'input_blocks.0.0.weight'],
    ['time_embedding.linear_1.weight', 'time_embed.0.weight'],
    ['time_embedding.linear_2.bias', 'time_embed.2.bias'],
    ['down_blocks.0.resnets.0.norm1.weight', 'input_blocks.1.0.in_layers.0.weight'],
    ['down_blocks.0.resnets.0.conv1.weight', 'input_blocks.1.0.in_layers.2.weight'],
    ['down_blocks.0.resnets.1.time_emb_proj.bias', 'input_blocks.2.0.emb_layers.1.bias'],
    ['down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k.weight', 'input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight'],
    ['down_blocks.0.downsamplers.0.conv.weight', 'input_blocks.3.0.op.weight'],
    ['down_blocks.1.resnets.0.conv_shortcut.weight', 'input_blocks.4.0.skip_connection.weight'],
    ['down_blocks.1.attentions.0.proj_in.weight', 'input_blocks.4.1.proj_in.weight'],
    ['down_blocks.2.downsamplers.0.conv.bias', 'input_blocks.9.0.op.bias'],
    ['down_blocks.3.resnets.1.norm2.weight', 'input_blocks.11.0.out_layers.0.weight'],
    ['down_blocks.3.resnets.1.conv2.weight', 'input_blocks.11.0.out_layers.3.weight'],
    ['mid_block.resnets.0.conv1.weight', 'middle_block.0.in_layers.2.weight'],
    ['mid_block.attentions.0.transformer_blocks.0.ff.net.0.proj.weight', 'middle_block.1.transformer_blocks.0.ff.net.0.proj.weight'],
    ['mid_block.resnets.1.time_emb_proj.weight', 'middle_block.2.emb_layers.1.weight'],
    ['up_blocks.0.resnets.0.conv_shortcut.weight', 'output_blocks.0.0.skip_connection.weight'],
    ['up_blocks.0.resnets.2.conv2.weight', 'output_blocks.2.0.out_layers.3.weight'],
    ['up_blocks.0.upsamplers.0.conv.weight', 'output_blocks.2.1.conv.weight'],
    ['up_blocks.1.attentions.0.norm.weight', 'output_blocks.3.1.norm.weight'],
    ['up_blocks.1.upsamplers.0.conv.weight', 'output_blocks.5.2.conv.weight'],
    ['up_blocks.2.attentions.2.transformer_blocks.0.attn1.to_out.0.bias', 'output_blocks.8.1.transformer_blocks.0.attn1.to_out.0.bias'],
    ['up_blocks.2.upsamplers.0.conv.bias', 'output_blocks.8.2.conv.bias'],
    ['up_blocks.3.resnets.0.conv_shortcut.bias', 'output_blocks.9.0.skip_connection.bias'],
    ['up_blocks.3.attentions.2.proj_out.weight', 'output_blocks.11.1.proj_out.weight'],
    ['conv_norm_out.weight', 'out.0.weight'],
    ['conv_out.bias', 'out.2.bias'],
  ];
  const vaePairs: [string, string][] = [
    ['encoder.conv_in.weight', 'encoder.conv_in.weight'],
    ['encoder.down_blocks.0.resnets.0.norm1.weight', 'encoder.down.0.block.0.norm1.weight'],
    ['encoder.down_blocks.1.resnets.0.conv_shortcut.weight', 'encoder.down.1.block.0.nin_shortcut.weight'],
    ['encoder.down_blocks.2.downsamplers.0.conv.weight', 'encoder.down.2.downsample.conv.weight'],
    ['encoder.mid_block.attentions.0.group_norm.bias', 'encoder.mid.attn_1.norm.bias'],
    ['encoder.mid_block.attentions.0.to_q.weight', 'encoder.mid.attn_1.q.weight'],
    ['encoder.mid_block.resnets.1.conv2.weight', 'encoder.mid.block_2.conv2.weight'],
    ['encoder.conv_norm_out.weight', 'encoder.norm_out.weight'],
    ['quant_conv.weight', 'quant_conv.weight'],
    ['post_quant_conv.bias', 'post_quant_conv.bias'],
    ['decoder.mid_block.resnets.0.norm2.bias', 'decoder.mid.block_1.norm2.bias'],
    ['decoder.mid_block.attentions.0.to_out.0.weight', 'decoder.mid.attn_1.proj_out.weight'],
    ['decoder.up_blocks.0.resnets.2.conv1.weight', 'decoder.up.3.block.2.conv1.weight'],
    ['decoder.up_blocks.0.upsamplers.0.conv.weight', 'decoder.up.3.upsample.conv.weight'],
    ['decoder.up_blocks.2.upsamplers.0.conv.bias', 'decoder.up.1.upsample.conv.bias'],
    ['decoder.up_blocks.3.resnets.0.conv_shortcut.weight', 'decoder.up.0.block.0.nin_shortcut.weight'],
    ['decoder.conv_norm_out.weight', 'decoder.norm_out.weight'],
  ];

  const both = (map: LdmKeyMap, pairs: [string, string][], prefix: string): void => {
    for (const [d, l] of pairs) {
      expect(map.toLdm(d), d).toBe(prefix + l);
      expect(map.fromLdm(prefix + l), l).toBe(d);
    }
  };

  it('maps the SD 1.5 UNet names both ways', () => both(ldmUNetKeyMap(SD15), unetPairs, 'model.diffusion_model.'));

  it('maps the SD 1.5 VAE names both ways', () => both(ldmVaeKeyMap({ block_out_channels: [128, 256, 512, 512], layers_per_block: 2 }), vaePairs, 'first_stage_model.'));

  it('maps the text encoder with or without the text_model level', () => {
    const k = 'text_model.encoder.layers.11.self_attn.q_proj.weight';
    expect(ldmTextEncoderKeyMap(true).toLdm(k)).toBe(`cond_stage_model.transformer.${k}`);
    expect(ldmTextEncoderKeyMap(false).toLdm(k)).toBe('cond_stage_model.transformer.encoder.layers.11.self_attn.q_proj.weight');
    expect(ldmTextEncoderKeyMap(false).fromLdm('cond_stage_model.transformer.final_layer_norm.weight')).toBe('text_model.final_layer_norm.weight');
    expect(ldmTextEncoderKeyMap(true).toLdm('conv_in.weight')).toBeUndefined();
  });

  it('knows nothing outside the architecture the config describes', () => {
    const map = ldmUNetKeyMap(SD15);
    for (const k of ['down_blocks.3.attentions.0.norm.weight', 'down_blocks.3.downsamplers.0.conv.weight', 'up_blocks.3.upsamplers.0.conv.weight',
      'down_blocks.0.resnets.2.conv1.weight', 'up_blocks.0.attentions.0.norm.weight', 'down_blocks.0.resnets.0.nonsense.weight', 'conv_in', 'add_embedding.linear_1.weight']) {
      expect(map.toLdm(k), k).toBeUndefined();
    }
    for (const k of ['model.diffusion_model.input_blocks.12.0.in_layers.0.weight', 'model.diffusion_model.input_blocks.1.0.in_layers.1.weight', 'model.diffusion_model.label_emb.0.0.weight', 'model_ema.decay', 'first_stage_model.encoder.conv_in.weight']) {
      expect(map.fromLdm(k), k).toBeUndefined();
    }
  });

  it('follows the config: three layers per block, other levels', () => {
    const map = ldmUNetKeyMap({ block_out_channels: [64, 128, 256], layers_per_block: 3, down_block_types: ['DownBlock2D', 'CrossAttnDownBlock2D', 'CrossAttnDownBlock2D'], up_block_types: ['CrossAttnUpBlock2D', 'CrossAttnUpBlock2D', 'UpBlock2D'] });
    expect(map.toLdm('down_blocks.0.downsamplers.0.conv.weight')).toBe('model.diffusion_model.input_blocks.4.0.op.weight');
    expect(map.toLdm('down_blocks.1.attentions.2.norm.weight')).toBe('model.diffusion_model.input_blocks.7.1.norm.weight');
    expect(map.toLdm('up_blocks.0.upsamplers.0.conv.weight')).toBe('model.diffusion_model.output_blocks.3.2.conv.weight');
    expect(map.toLdm('up_blocks.1.resnets.3.conv1.weight')).toBe('model.diffusion_model.output_blocks.7.0.in_layers.2.weight');
    expect(map.toLdm('up_blocks.2.resnets.3.conv1.weight')).toBe('model.diffusion_model.output_blocks.11.0.in_layers.2.weight');
    expect(map.toLdm('up_blocks.2.upsamplers.0.conv.weight')).toBeUndefined();
    expect(map.toLdm('down_blocks.0.attentions.0.norm.weight')).toBeUndefined();
  });
});

// ---------------------------------------------------------------- models built from the fixture weights

interface Entry {
  name: string;
  tensor: TensorToWrite;
}

function readEntries(file: SafetensorsFile): Entry[] {
  return [...file.tensors.values()].map((t) => ({ name: t.name, tensor: { dtype: t.dtype, shape: t.shape, data: file.readBytes(t.name) } }));
}

const write = (file: string, entries: readonly Entry[]): void => writeSafetensors(file, entries.map((e) => [e.name, e.tensor] as const));
const writeJson = (file: string, json: unknown): void => {
  mkdirSync(path.dirname(file), { recursive: true });
  writeFileSync(file, JSON.stringify(json, null, 2));
};

const MODEL_INDEX = {
  _class_name: 'StableDiffusionPipeline',
  _diffusers_version: '0.27.2',
  scheduler: ['diffusers', 'DDIMScheduler'],
  text_encoder: ['transformers', 'CLIPTextModel'],
  tokenizer: ['transformers', 'CLIPTokenizer'],
  unet: ['diffusers', 'UNet2DConditionModel'],
  vae: ['diffusers', 'AutoencoderKL'],
  safety_checker: [null, null],
  feature_extractor: [null, null],
};

const EXTRAS: Entry[] = [
  { name: 'model_ema.decay', tensor: { dtype: 'F32', shape: [], data: Float32Array.of(0.9999) } },
  { name: 'model_ema.num_updates', tensor: { dtype: 'I64', shape: [], data: BigInt64Array.of(1234n) } },
  { name: 'model_ema.diffusion_modelinput_blocks00weight', tensor: { dtype: 'F32', shape: [2, 2], data: new Float32Array(4) } },
  { name: 'alphas_cumprod', tensor: { dtype: 'F32', shape: [1000], data: new Float32Array(1000).fill(0.5) } },
];

const VAE_LINEAR_AS_CONV = /mid_block\.attentions\.0\.(to_q|to_k|to_v|to_out\.0)\.weight$/;

describe.skipIf(!hasShared)('openModel on models built from the fixture weights', () => {
  let tmp = '';
  let diffusersDir = '';
  let ldmFile = '';
  let ldmFlatFile = '';
  const fixture = {} as Record<Part, SafetensorsFile>;
  const maps = {} as Record<Part, LdmKeyMap>;
  /** The LDM file's entries (renamed fixture tensors), for variants of it. */
  let ldmEntries: Entry[] = [];
  const opened: OpenedModel[] = [];

  const open = (p: string, options?: Parameters<typeof openModel>[1]): OpenedModel => {
    const m = openModel(p, options);
    opened.push(m);
    return m;
  };

  function makeFolder(dir: string, edit: { omit?: string[]; json?: Record<string, unknown> } = {}): void {
    const files: Record<string, string> = {
      'unet/diffusion_pytorch_model.safetensors': fixtureWeights('unet'),
      'text_encoder/model.safetensors': fixtureWeights('textEncoder'),
      'vae/diffusion_pytorch_model.safetensors': fixtureWeights('vae'),
      'tokenizer/vocab.json': path.join(SD1, 'pipeline', 'vocab.json'),
      'tokenizer/merges.txt': path.join(SD1, 'pipeline', 'merges.txt'),
    };
    const pipeline = (JSON.parse(readFileSync(path.join(SD1, 'pipeline', 'fixture.json'), 'utf8')) as { config: Record<string, JsonObject> }).config;
    const jsons: Record<string, unknown> = {
      'model_index.json': MODEL_INDEX,
      'unet/config.json': fixtureConfig('unet'),
      'text_encoder/config.json': fixtureConfig('textEncoder'),
      'vae/config.json': fixtureConfig('vae'),
      'scheduler/scheduler_config.json': pipeline.scheduler,
      ...edit.json,
    };
    for (const [rel, src] of Object.entries(files)) {
      if (edit.omit?.includes(rel)) continue;
      mkdirSync(path.join(dir, path.dirname(rel)), { recursive: true });
      copyFileSync(src, path.join(dir, rel));
    }
    for (const [rel, json] of Object.entries(jsons)) if (!edit.omit?.includes(rel)) writeJson(path.join(dir, rel), json);
  }

  beforeAll(() => {
    tmp = mkdtempSync(path.join(tmpdir(), 'lethe-checkpoint-'));
    for (const part of PARTS) fixture[part] = openSafetensors(fixtureWeights(part));
    maps.unet = ldmUNetKeyMap(fixtureConfig('unet') as unknown as UNetLayout);
    maps.vae = ldmVaeKeyMap(fixtureConfig('vae') as unknown as VaeLayout);
    maps.textEncoder = ldmTextEncoderKeyMap(true);

    diffusersDir = path.join(tmp, 'diffusers');
    makeFolder(diffusersDir);

    // The LDM file: every fixture key renamed through the map, the VAE attention
    // linears stored as 1x1 convs as LDM does, plus extras a real file carries.
    const renamed = (part: Part, map: LdmKeyMap): Entry[] => readEntries(fixture[part]).map(({ name, tensor }) => {
      const key = map.toLdm(name);
      if (key === undefined) throw new Error(`the map has no LDM name for ${name}`);
      const shape = part === 'vae' && VAE_LINEAR_AS_CONV.test(name) ? [...tensor.shape, 1, 1] : tensor.shape;
      return { name: key, tensor: { ...tensor, shape } };
    });
    ldmEntries = [...EXTRAS.slice(0, 2), ...renamed('unet', maps.unet), ...renamed('textEncoder', maps.textEncoder), ...EXTRAS.slice(2), ...renamed('vae', maps.vae)];
    ldmFile = path.join(tmp, 'small-sd1.safetensors');
    write(ldmFile, ldmEntries);
    ldmFlatFile = path.join(tmp, 'small-sd1-no-text-model-level.safetensors');
    write(ldmFlatFile, ldmEntries.map((e) => ({ ...e, name: e.name.replace('cond_stage_model.transformer.text_model.', 'cond_stage_model.transformer.') })));
  });

  afterAll(() => {
    for (const m of opened) m.close();
    for (const f of Object.values(fixture)) f.close();
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  /** Every fixture key resolves to the same bytes (and the same shape up to size-1 axes). */
  function expectSameTensors(model: OpenedModel): void {
    for (const part of PARTS) {
      const component: ModelComponent<JsonObject> = model[part];
      const src = fixture[part];
      const reached = new Set<string>();
      for (const [name, info] of src.tensors) {
        const loc = component.resolve(name);
        expect(loc, `${part}: ${name}`).toBeDefined();
        const got = loc!.file.info(loc!.key);
        expect(got.dtype).toBe(info.dtype);
        expect(got.shape.filter((d) => d !== 1)).toEqual(info.shape.filter((d) => d !== 1));
        expect(Buffer.from(loc!.file.readBytes(loc!.key)).equals(Buffer.from(src.readBytes(name))), `${part}: ${name} bytes`).toBe(true);
        reached.add(`${loc!.file.path}\0${loc!.key}`);
      }
      // Exactly the fixture's keys, each read from a distinct tensor.
      expect(reached.size).toBe(src.tensors.size);
      expect(new Set(component.keys())).toEqual(new Set(src.tensors.keys()));
      expect(component.resolve(`${[...src.tensors.keys()][0]}.missing`)).toBeUndefined();
    }
  }

  it('opens the diffusers folder', () => {
    const m = open(diffusersDir);
    expect(m.layout).toBe('diffusers');
    expect(m.path).toBe(path.resolve(diffusersDir));
    expect(m.unet.config).toEqual(fixtureConfig('unet'));
    expect(m.textEncoder.config).toEqual(fixtureConfig('textEncoder'));
    expect(m.vae.config).toEqual(fixtureConfig('vae'));
    expect(m.tokenizerDir).toBe(path.join(diffusersDir, 'tokenizer'));
    expect(m.schedulerConfig).toMatchObject({ _class_name: 'DDIMScheduler', beta_schedule: 'scaled_linear', steps_offset: 1 });
    expect(m.extraKeys).toEqual([]);
    expectSameTensors(m);
    // Also through open(model_index.json).
    expect(open(path.join(diffusersDir, 'model_index.json')).layout).toBe('diffusers');
  });

  it('opens the single-file LDM checkpoint to the same tensors', () => {
    const m = open(ldmFile);
    expect(m.layout).toBe('single-file');
    expect(m.tokenizerDir).toBeNull();
    expectSameTensors(m);
    // Nothing in the file is left unmapped but the extras.
    expect([...m.extraKeys].sort()).toEqual(EXTRAS.map((e) => e.name).sort());
    const used = new Set(PARTS.flatMap((p) => m[p].keys().map((k) => m[p].resolve(k)!.key)));
    expect(used.size + m.extraKeys.length).toBe(ldmEntries.length);
  });

  it('opens a single file whose text encoder omits the text_model level', () => {
    const m = open(ldmFlatFile);
    expectSameTensors(m);
    expect(m.textEncoder.resolve('text_model.final_layer_norm.weight')!.key).toBe('cond_stage_model.transformer.final_layer_norm.weight');
  });

  it('infers the single-file configs from the tensor shapes', () => {
    const m = open(ldmFile);
    const fu = fixtureConfig('unet');
    expect(m.unet.config).toMatchObject({
      _class_name: 'UNet2DConditionModel',
      in_channels: 4,
      out_channels: 4,
      block_out_channels: [32, 64, 64, 64],
      layers_per_block: 2,
      cross_attention_dim: 32,
      down_block_types: fu.down_block_types,
      up_block_types: fu.up_block_types,
      mid_block_type: 'UNetMidBlock2DCrossAttn',
    });
    expect(m.vae.config).toMatchObject({ _class_name: 'AutoencoderKL', in_channels: 3, out_channels: 3, block_out_channels: [32, 64, 64], layers_per_block: 2, latent_channels: 4, scaling_factor: 0.18215 });
    expect(m.textEncoder.config).toMatchObject({ vocab_size: 1000, hidden_size: 32, intermediate_size: 64, num_hidden_layers: 2, max_position_embeddings: 77, hidden_act: 'quick_gelu' });
    expect(m.schedulerConfig).toMatchObject({ num_train_timesteps: 1000, beta_start: 0.00085, beta_end: 0.012, beta_schedule: 'scaled_linear', steps_offset: 1, set_alpha_to_one: false });
    // The configs are valid diffusers/transformers configs for the model builders.
    expect(() => parseUNetConfig(m.unet.config)).not.toThrow();
    expect(() => parseVaeConfig(m.vae.config)).not.toThrow();
    expect(() => parseClipTextConfig(m.textEncoder.config)).not.toThrow();
  });

  it('takes what the shapes cannot tell (heads, norm groups) as overrides', () => {
    const m = open(ldmFile, {
      configs: {
        unet: { attention_head_dim: 4, norm_num_groups: 8, sample_size: 8 },
        textEncoder: { num_attention_heads: 4 },
        vae: { norm_num_groups: 8, sample_size: 16 },
      },
    });
    expect(parseUNetConfig(m.unet.config)).toEqual(parseUNetConfig(fixtureConfig('unet')));
    expect(parseVaeConfig(m.vae.config)).toEqual(parseVaeConfig(fixtureConfig('vae')));
    expect(parseClipTextConfig(m.textEncoder.config)).toEqual(parseClipTextConfig(fixtureConfig('textEncoder')));
  });

  it('decodes the vae-decode case from the single file (1x1-conv attention weights bound as linears)', async () => {
    const c = loadFixture(path.join(SD1, 'vae-decode'));
    try {
      const z = { dtype: 'float32' as const, shape: c.json.inputs.z.shape, data: c.input('z') as Float32Array };
      const cfg = parseVaeConfig(c.json.config);
      const map = ldmVaeKeyMap(cfg);
      const out = await runVaeOnce(ldmFile, cfg, 'decode', z, {
        resolver: ([file]) => (name) => {
          const key = map.toLdm(name);
          return key !== undefined && file.tensors.has(key) ? { file, key } : undefined;
        },
      });
      const reports = compareOutputs(c, { image: { shape: out.image.shape, data: out.image.data as Float32Array } });
      expect(reports.every((r) => r.pass), JSON.stringify(reports)).toBe(true);
    } finally {
      c.io?.close();
    }
  });

  it('reads fp16-variant, sharded and legacy-named diffusers weights', () => {
    const dir = path.join(tmp, 'variants');
    makeFolder(dir, { omit: ['unet/diffusion_pytorch_model.safetensors', 'vae/diffusion_pytorch_model.safetensors', 'tokenizer/vocab.json', 'tokenizer/merges.txt'] });
    // UNet in two shards with an index.
    const unet = readEntries(fixture.unet);
    const half = Math.ceil(unet.length / 2);
    const shards = { 'diffusion_pytorch_model-00001-of-00002.safetensors': unet.slice(0, half), 'diffusion_pytorch_model-00002-of-00002.safetensors': unet.slice(half) };
    const weightMap: Record<string, string> = {};
    for (const [name, entries] of Object.entries(shards)) {
      write(path.join(dir, 'unet', name), entries);
      for (const e of entries) weightMap[e.name] = name;
    }
    writeJson(path.join(dir, 'unet', 'diffusion_pytorch_model.safetensors.index.json'), { metadata: {}, weight_map: weightMap });
    // VAE under the fp16 variant name, with the pre-0.14 attention names.
    const legacy = readEntries(fixture.vae).map((e) => ({ ...e, name: e.name.replace('.to_q.', '.query.').replace('.to_k.', '.key.').replace('.to_v.', '.value.').replace('.to_out.0.', '.proj_attn.') }));
    write(path.join(dir, 'vae', 'diffusion_pytorch_model.fp16.safetensors'), legacy);
    // No tokenizer in model_index.json and no folder: null (the standard CLIP vocabulary).
    writeJson(path.join(dir, 'model_index.json'), { ...MODEL_INDEX, tokenizer: [null, null] });

    const m = open(dir);
    expect(m.unet.files).toHaveLength(2);
    expect(m.vae.resolve('decoder.mid_block.attentions.0.to_out.0.weight')!.key).toBe('decoder.mid_block.attentions.0.proj_attn.weight');
    expect(m.tokenizerDir).toBeNull();
    expectSameTensors(m);
  });

  it('hashes fast and stably', () => {
    const a = open(ldmFile).hash();
    expect(a).toMatch(/^[0-9a-f]{64}$/);
    expect(open(ldmFile).hash()).toBe(a);
    expect(quickFileHash(ldmFile)).toBe(a);
    const moved = path.join(tmp, 'moved.safetensors');
    copyFileSync(ldmFile, moved);
    expect(quickFileHash(moved)).toBe(a);
    // A byte changed in the head (or tail) changes it.
    const bytes = readFileSync(moved);
    bytes[bytes.length - 1] ^= 1;
    writeFileSync(moved, bytes);
    expect(quickFileHash(moved)).not.toBe(a);
    expect(quickFileHash(ldmFlatFile)).not.toBe(a);
    const d = open(diffusersDir).hash();
    expect(d).toMatch(/^[0-9a-f]{64}$/);
    expect(d).not.toBe(a);
    expect(open(diffusersDir).hash()).toBe(d);
  });

  // ---------------------------------------------------------------- refusals

  const refused = (p: string, arch: ModelArchitecture, ...words: string[]): void => {
    let err: unknown;
    try {
      open(p);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(UnsupportedModelError);
    const e = err as UnsupportedModelError;
    expect(e).toBeInstanceOf(LetheError);
    expect(e.code).toBe('unsupported-model');
    expect(e.architecture).toBe(arch);
    expect(e.message).toContain('Stable Diffusion 1.x');
    for (const w of words) expect(e.message).toContain(w);
  };

  /** A single file from the LDM entries, changed by `edit` (null drops an entry), plus `add`. */
  const variant = (name: string, edit: (e: Entry) => Entry | null, add: Entry[] = []): string => {
    const file = path.join(tmp, name);
    write(file, [...ldmEntries.map(edit).filter((e): e is Entry => e !== null), ...add]);
    return file;
  };
  const tiny = (name: string, shape: number[] = [2]): Entry => ({ name, tensor: { dtype: 'F32', shape, data: new Float32Array(shape.reduce((a, b) => a * b, 1)) } });
  const tinyFile = (file: string, names: string[]): string => {
    const p = path.join(tmp, file);
    write(p, names.map((n) => tiny(n)));
    return p;
  };

  it('refuses SD 2.x: an OpenCLIP text encoder, linear proj_in, or 1024-wide cross-attention', () => {
    refused(variant('sd2-openclip.safetensors', (e) => (e.name.startsWith(LDM_PREFIX.textEncoder) ? { ...e, name: e.name.replace(LDM_PREFIX.textEncoder, 'cond_stage_model.model.') } : e)), 'SD 2.x', 'SD 2.x', 'cond_stage_model.model.');
    refused(variant('sd2-linear.safetensors', (e) => (/\.proj_(in|out)\.weight$/.test(e.name) ? { ...e, tensor: { ...e.tensor, shape: e.tensor.shape.slice(0, 2) } } : e)), 'SD 2.x', 'proj_in');
    refused(variant('sd2-ctx.safetensors', (e) => {
      if (!/attn2\.to_[kv]\.weight$/.test(e.name)) return e;
      const [c] = e.tensor.shape;
      return tiny(e.name, [c, 1024]);
    }), 'SD 2.x', '1024');
  });

  it('refuses SDXL, SD 3 and Flux', () => {
    refused(variant('sdxl.safetensors', (e) => e, [tiny('conditioner.embedders.1.model.token_embedding.weight'), tiny('model.diffusion_model.label_emb.0.0.weight')]), 'SDXL', 'SDXL');
    refused(tinyFile('sdxl-label.safetensors', ['model.diffusion_model.input_blocks.0.0.weight', 'model.diffusion_model.label_emb.0.0.weight']), 'SDXL');
    refused(tinyFile('sd3.safetensors', ['model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight', 'text_encoders.clip_l.transformer.text_model.final_layer_norm.weight']), 'SD 3', 'Stable Diffusion 3');
    refused(tinyFile('flux.safetensors', ['double_blocks.0.img_attn.qkv.weight', 'single_blocks.0.linear1.weight']), 'Flux', 'Flux');
  });

  it('refuses an inpainting UNet (9 input channels), saying so', () => {
    const file = variant('inpainting.safetensors', (e) => (e.name === 'model.diffusion_model.input_blocks.0.0.weight' ? tiny(e.name, [e.tensor.shape[0], 9, 3, 3]) : e));
    refused(file, 'SD 1.x inpainting', 'inpainting', '9');
  });

  it('refuses a file that is not a diffusion model, a LoRA, and a lone component', () => {
    refused(tinyFile('bert.safetensors', ['bert.embeddings.word_embeddings.weight', 'bert.encoder.layer.0.attention.self.query.weight', 'classifier.weight']), 'not a diffusion model', 'not a diffusion model');
    refused(tinyFile('empty.safetensors', []), 'not a diffusion model');
    refused(tinyFile('lora.safetensors', ['lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight', 'lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight']), 'LoRA', 'LoRA');
    // The UNet of a diffusers folder, opened on its own.
    expect(() => open(fixtureWeights('unet'))).toThrow(ModelIncompleteError);
    expect(() => open(fixtureWeights('unet'))).toThrow(/only a UNet.*model_index\.json/);
    // A UNet with no VAE.
    const noVae = variant('no-vae.safetensors', (e) => (e.name.startsWith(LDM_PREFIX.vae) ? null : e));
    expect(() => open(noVae)).toThrow(/no VAE \(first_stage_model/);
  });

  it('refuses pickles (.ckpt, and a torch zip under another name)', () => {
    const ckpt = path.join(tmp, 'model.ckpt');
    writeFileSync(ckpt, Buffer.from('PK\x03\x04 not really a zip'));
    expect(() => open(ckpt)).toThrow(PickleCheckpointError);
    expect(() => open(ckpt)).toThrow(/only safetensors.*model\.safetensors/s);
    const disguised = path.join(tmp, 'model.weights');
    writeFileSync(disguised, Buffer.from('PK\x03\x04 not really a zip'));
    expect(() => open(disguised)).toThrow(PickleCheckpointError);
    const other = path.join(tmp, 'notes.txt');
    writeFileSync(other, 'hello');
    expect(() => open(other)).toThrow(FileFormatError);
    expect(() => open(path.join(tmp, 'nowhere.safetensors'))).toThrow(/not found/);
  });

  it('names the missing file of an incomplete diffusers folder', () => {
    const dir = path.join(tmp, 'no-unet-config');
    makeFolder(dir, { omit: ['unet/config.json'] });
    let err: unknown;
    try {
      open(dir);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ModelIncompleteError);
    expect((err as ModelIncompleteError).missing).toEqual(['unet/config.json']);
    expect((err as Error).message).toContain('unet/config.json');

    const noWeights = path.join(tmp, 'no-vae-weights');
    makeFolder(noWeights, { omit: ['vae/diffusion_pytorch_model.safetensors'] });
    expect(() => open(noWeights)).toThrow(/vae\/diffusion_pytorch_model\.safetensors is missing/);

    const noIndex = path.join(tmp, 'no-index');
    makeFolder(noIndex, { omit: ['model_index.json'] });
    expect(() => open(noIndex)).toThrow(/model_index\.json is missing/);

    expect(() => open(path.join(diffusersDir, 'unet'))).toThrow(/component folder.*open the folder above it/);

    const noMerges = path.join(tmp, 'no-merges');
    makeFolder(noMerges, { omit: ['tokenizer/merges.txt'] });
    expect(() => open(noMerges)).toThrow(/tokenizer\/merges\.txt/);
  });

  it('refuses .bin (pickle) weights in a diffusers folder and says how to convert', () => {
    const dir = path.join(tmp, 'bin-weights');
    makeFolder(dir, { omit: ['text_encoder/model.safetensors'] });
    writeFileSync(path.join(dir, 'text_encoder', 'pytorch_model.bin'), Buffer.from('PK\x03\x04'));
    let err: unknown;
    try {
      open(dir);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(PickleCheckpointError);
    const msg = (err as Error).message;
    expect(msg).toContain('pytorch_model.bin');
    expect(msg).toContain('only safetensors');
    expect(msg).toContain('safe_serialization=True');
  });

  it('refuses other architectures in diffusers folders', () => {
    const xl = path.join(tmp, 'sdxl-folder');
    makeFolder(xl, { json: { 'model_index.json': { ...MODEL_INDEX, _class_name: 'StableDiffusionXLPipeline', text_encoder_2: ['transformers', 'CLIPTextModelWithProjection'] } } });
    refused(xl, 'SDXL');
    const inpaint = path.join(tmp, 'inpaint-folder');
    makeFolder(inpaint, { json: { 'unet/config.json': { ...fixtureConfig('unet'), in_channels: 9 } } });
    refused(inpaint, 'SD 1.x inpainting', '9 channels');
    const sd2 = path.join(tmp, 'sd2-folder');
    makeFolder(sd2, { json: { 'unet/config.json': { ...fixtureConfig('unet'), cross_attention_dim: 1024, use_linear_projection: true } } });
    refused(sd2, 'SD 2.x');
  });

  it('closes its files when opening fails half-way', () => {
    // A folder whose VAE weights are corrupt: the UNet and text encoder were already open.
    const dir = path.join(tmp, 'corrupt-vae');
    makeFolder(dir, { omit: ['vae/diffusion_pytorch_model.safetensors'] });
    writeFileSync(path.join(dir, 'vae', 'diffusion_pytorch_model.safetensors'), Buffer.alloc(16));
    const fds = (): number => (existsSync('/proc/self/fd') ? readdirSync('/proc/self/fd').length : 0);
    const before = fds();
    for (let i = 0; i < 5; i++) expect(() => open(dir)).toThrow(FileFormatError);
    expect(fds()).toBe(before);
    // Symlinked weights are followed like files.
    const linked = path.join(tmp, 'linked');
    makeFolder(linked, { omit: ['unet/diffusion_pytorch_model.safetensors'] });
    symlinkSync(fixtureWeights('unet'), path.join(linked, 'unet', 'diffusion_pytorch_model.safetensors'));
    expect(open(linked).unet.keys()).toHaveLength(fixture.unet.tensors.size);
  });
});
