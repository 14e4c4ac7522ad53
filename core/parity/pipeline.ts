/**
 * The `pipeline` case: StableDiffusionPipeline end to end (prompts, given
 * initial latents, DDIM, guidance, VAE) with the case's three weight files
 * and its own tokenizer.
 */
import path from 'node:path';
import { TextToImage } from '../diffusion/pipeline.ts';
import { parseSchedulerConfig } from '../diffusion/schedule.ts';
import { openSafetensors } from '../io/safetensors.ts';
import { parseClipTextConfig } from '../nn/clip-text.ts';
import { prefixResolver } from '../nn/params.ts';
import { parseUNetConfig } from '../nn/unet.ts';
import { parseVaeConfig } from '../nn/vae.ts';
import { ClipTokenizer } from '../text/clip-tokenizer.ts';
import type { OutputValue, ParityRunner } from './fixture.ts';

export const runPipeline: ParityRunner = async (c) => {
  const cfg = c.json.config as Record<string, unknown>;
  const params = c.json.params as { prompt: string[]; negative_prompt: string | null; height: number; width: number; num_inference_steps: number; guidance_scale: number; eta: number };
  const files = ['unet', 'text_encoder', 'vae'].map((part) => openSafetensors(c.weightsPath(part)));
  const [unetFile, textFile, vaeFile] = files;
  const pipe = new TextToImage(
    {
      unet: { config: parseUNetConfig(cfg.unet), resolve: prefixResolver([unetFile]) },
      textEncoder: { config: parseClipTextConfig(cfg.text_encoder), resolve: prefixResolver([textFile]), prefix: 'text_model' },
      vae: { config: parseVaeConfig(cfg.vae), resolve: prefixResolver([vaeFile]) },
      tokenizer: ClipTokenizer.fromFiles(path.join(c.dir, 'vocab.json'), path.join(c.dir, 'merges.txt')),
      scheduler: parseSchedulerConfig(cfg.scheduler),
    },
    { provider: 'cpu' },
  );
  try {
    const b = params.prompt.length;
    const r = await pipe.generate(
      {
        prompts: params.prompt,
        negativePrompt: params.negative_prompt ?? '',
        seeds: params.prompt.map(() => 0),
        steps: params.num_inference_steps,
        guidance: params.guidance_scale,
        width: params.width,
        height: params.height,
        eta: params.eta,
        latents: c.input('latents') as Float32Array,
      },
      { trace: true },
    );
    const out: Record<string, OutputValue> = {};
    const ids = (texts: string[]) => BigInt64Array.from(texts.flatMap((t) => Array.from(pipe.model.tokenizer.encodeForModel(t, 77).ids, (v) => BigInt(v))));
    out.cond_input_ids = { shape: [b, 77], data: ids(params.prompt) };
    out.uncond_input_ids = { shape: [b, 77], data: ids(params.prompt.map(() => params.negative_prompt ?? '')) };
    out.prompt_embeds = { shape: r.promptEmbeds.shape, data: r.promptEmbeds.data as Float32Array };
    out.negative_prompt_embeds = { shape: r.negativeEmbeds.shape, data: r.negativeEmbeds.data as Float32Array };
    out.timesteps = { shape: [r.timesteps.length], data: BigInt64Array.from(r.timesteps, BigInt) };
    const latentShape = [b, 4, params.height / pipe.vaeScaleFactor, params.width / pipe.vaeScaleFactor];
    r.trace!.unetOut.forEach((u, k) => (out[`unet_out.${k}`] = { shape: [2 * b, ...latentShape.slice(1)], data: u }));
    r.trace!.latents.forEach((l, k) => (out[`latents.${k}`] = { shape: latentShape, data: l }));
    out.image = { shape: [b, params.height, params.width, 3], data: r.image };
    return out;
  } finally {
    await pipe.release();
    files.forEach((f) => f.close());
  }
};
