/**
 * Builds, from the shared fixture weights, the same small SD 1.x model in the
 * two layouts users bring: a diffusers folder and a single-file LDM checkpoint.
 */
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { ldmTextEncoderKeyMap, ldmUNetKeyMap, ldmVaeKeyMap, type LdmKeyMap } from '../../core/io/checkpoint.ts';
import { openSafetensors, writeSafetensors, type TensorToWrite } from '../../core/io/safetensors.ts';
import { FIXTURES_DIR } from './shared.ts';

const SD1 = path.join(FIXTURES_DIR, 'sd1');
const pipelineConfig = (): Record<string, Record<string, unknown>> =>
  (JSON.parse(readFileSync(path.join(SD1, 'pipeline', 'fixture.json'), 'utf8')) as { config: Record<string, Record<string, unknown>> }).config;

const WEIGHTS = { unet: 'unet-forward', text_encoder: 'clip-text', vae: 'vae-decode' } as const;

export function writeDiffusersFolder(dir: string): string {
  const cfg = pipelineConfig();
  const files = { unet: 'diffusion_pytorch_model.safetensors', text_encoder: 'model.safetensors', vae: 'diffusion_pytorch_model.safetensors' };
  for (const part of ['unet', 'text_encoder', 'vae'] as const) {
    mkdirSync(path.join(dir, part), { recursive: true });
    writeFileSync(path.join(dir, part, 'config.json'), JSON.stringify(cfg[part]));
    copyFileSync(path.join(SD1, WEIGHTS[part], 'weights.safetensors'), path.join(dir, part, files[part]));
  }
  mkdirSync(path.join(dir, 'tokenizer'), { recursive: true });
  mkdirSync(path.join(dir, 'scheduler'), { recursive: true });
  for (const f of ['vocab.json', 'merges.txt']) copyFileSync(path.join(SD1, 'pipeline', f), path.join(dir, 'tokenizer', f));
  writeFileSync(path.join(dir, 'tokenizer', 'special_tokens_map.json'), JSON.stringify({ bos_token: '<|startoftext|>', eos_token: '<|endoftext|>', pad_token: '<|endoftext|>', unk_token: '<|endoftext|>' }));
  writeFileSync(path.join(dir, 'scheduler', 'scheduler_config.json'), JSON.stringify(cfg.scheduler));
  writeFileSync(path.join(dir, 'model_index.json'), JSON.stringify({ _class_name: 'StableDiffusionPipeline', unet: ['diffusers', 'UNet2DConditionModel'], text_encoder: ['transformers', 'CLIPTextModel'], vae: ['diffusers', 'AutoencoderKL'], tokenizer: ['transformers', 'CLIPTokenizer'], scheduler: ['diffusers', 'DDIMScheduler'] }));
  return dir;
}

/** The same weights renamed to LDM keys in one file (VAE attention as 1x1 convs, plus an EMA extra). */
export function writeSingleFile(file: string): string {
  const cfg = pipelineConfig();
  const maps: Record<keyof typeof WEIGHTS, LdmKeyMap> = {
    unet: ldmUNetKeyMap(cfg.unet as unknown as Parameters<typeof ldmUNetKeyMap>[0]),
    text_encoder: ldmTextEncoderKeyMap(true),
    vae: ldmVaeKeyMap(cfg.vae as unknown as Parameters<typeof ldmVaeKeyMap>[0]),
  };
  const tensors: Record<string, TensorToWrite> = {};
  for (const part of ['unet', 'text_encoder', 'vae'] as const) {
    const st = openSafetensors(path.join(SD1, WEIGHTS[part], 'weights.safetensors'));
    for (const t of st.tensors.values()) {
      const key = maps[part].toLdm(t.name);
      if (!key) throw new Error(`no LDM name for ${part} key ${t.name}`);
      const conv = part === 'vae' && /attentions\.0\.to_[qkv]\.weight$|attentions\.0\.to_out\.0\.weight$/.test(t.name);
      tensors[key] = { dtype: t.dtype, shape: conv ? [...t.shape, 1, 1] : t.shape, data: st.read(t.name) };
    }
    st.close();
  }
  tensors['model_ema.decay'] = { dtype: 'F32', shape: [], data: new Float32Array([0.9999]) };
  writeSafetensors(file, tensors);
  return file;
}

export const pipelineTokenizerDir = (): string => path.join(SD1, 'pipeline');
