/**
 * The UNet of lethe-mini: epsilon prediction on SD's scaled-linear schedule,
 * conditioned on the frozen mini-CLIP text tower (its shipped fp16 weights
 * are initializers of the training graph, as CLIP is frozen for SD), with
 * `emptyCaptionRate` of the captions replaced by "" so classifier-free
 * guidance works. Latents are sampled from the stored encoder distribution
 * of each image and scaled by the measured factor.
 */
import * as F from '../../core/graph/functional.ts';
import { Graph, type Tensor } from '../../core/graph/graph.ts';
import { noiseCoefficients, type SchedulerConfig } from '../../core/diffusion/schedule.ts';
import { clipTextEncoder, parseClipTextConfig } from '../../core/nn/clip-text.ts';
import { torchDefaultInit } from '../../core/nn/init.ts';
import { ParamBinder, type KeyResolver } from '../../core/nn/params.ts';
import { parseUNetConfig, unet } from '../../core/nn/unet.ts';
import { TorchCompatibleGenerator } from '../../core/runtime/random.ts';
import type { Feeds } from '../../core/runtime/session.ts';
import { Trainer } from '../../core/runtime/trainer.ts';
import type { ClipTokenizer } from '../../core/text/clip-tokenizer.ts';
import { encodeBatch, stepRng, type MiniDataset } from './data.ts';
import { MAX_POSITIONS } from './model-config.ts';

export interface UNetStageOptions {
  config: Record<string, unknown>;
  textConfig: Record<string, unknown>;
  /** The trained text encoder's weights (frozen). */
  textResolve: KeyResolver;
  batch: number;
  lr: number;
  emptyCaptionRate: number;
  scalingFactor: number;
  seed: number;
  threads?: number;
}

export async function unetTrainer(o: UNetStageOptions) {
  const cfg = parseUNetConfig(o.config);
  const g = new Graph();
  const ids = g.input('input_ids', [o.batch, MAX_POSITIONS], 'int64');
  const latentShape = [o.batch, cfg.in_channels, cfg.sample_size, cfg.sample_size];
  const mean = g.input('latent_mean', latentShape);
  const std = g.input('latent_std', latentShape);
  const latentEps = g.input('latent_eps', latentShape);
  const noise = g.input('noise', latentShape);
  const t = g.input('t', [o.batch]);
  const signal = g.input('signal', [o.batch, 1, 1, 1]);
  const noiseScale = g.input('noise_scale', [o.batch, 1, 1, 1]);

  const text = new ParamBinder(g, o.textResolve);
  const context = F.stopGradient(clipTextEncoder(text.scope('text_model'), parseClipTextConfig(o.textConfig), ids).lastHiddenState);
  text.finish('text encoder');

  const x0 = F.mul(F.add(mean, F.mul(std, latentEps)), o.scalingFactor);
  const noisy = F.add(F.mul(x0, signal), F.mul(noise, noiseScale));
  const binder = new ParamBinder(g, () => undefined, { initialize: torchDefaultInit(o.seed, { zero: (n) => n.startsWith('conv_out.') }) });
  const pred = unet(binder.scope(''), cfg, noisy, t, context);
  binder.finish('UNet');
  const loss = F.mse(pred, noise);
  const params: Record<string, { tensor: Tensor; init: Float32Array }> = {};
  for (const n of binder.trainableNames) params[n] = { tensor: g.byName(n)!, init: binder.initialValue(n) };
  return Trainer.create({
    loss,
    params,
    optimizer: { kind: 'adamw', lr: o.lr, weightDecay: 0.01, maxGradNorm: 1 },
    session: { provider: 'cpu', threads: o.threads },
  });
}

export interface EncodedLatents {
  mean: Float32Array;
  std: Float32Array;
}

/** Step `s`'s batch: random images, one of their captions (or "" at the empty-caption rate), timesteps uniform in [0, T). */
export function unetBatches(data: MiniDataset, latents: EncodedLatents, tokenizer: ClipTokenizer, scheduler: SchedulerConfig, o: UNetStageOptions): (step: number) => Feeds {
  const per = latents.mean.length / data.count;
  const mean = new Float32Array(o.batch * per);
  const std = new Float32Array(o.batch * per);
  return (step) => {
    const rand = stepRng(o.seed, step);
    const imageIds = Array.from({ length: o.batch }, () => Math.floor(rand() * data.count));
    const captions = imageIds.map((id) => {
      if (rand() < o.emptyCaptionRate) return '';
      const cs = data.index.images[id].captions;
      return cs[Math.floor(rand() * cs.length)];
    });
    imageIds.forEach((id, i) => {
      mean.set(latents.mean.subarray(id * per, (id + 1) * per), i * per);
      std.set(latents.std.subarray(id * per, (id + 1) * per), i * per);
    });
    const ts = imageIds.map(() => Math.floor(rand() * scheduler.num_train_timesteps));
    const coeffs = ts.map((t) => noiseCoefficients(scheduler, t));
    const gen = new TorchCompatibleGenerator(o.seed * 1_000_003 + step);
    return {
      input_ids: encodeBatch(tokenizer, captions, MAX_POSITIONS),
      latent_mean: mean,
      latent_std: std,
      latent_eps: gen.randn(o.batch * per),
      noise: gen.randn(o.batch * per),
      t: Float32Array.from(ts),
      signal: Float32Array.from(coeffs, (c) => c.signal),
      noise_scale: Float32Array.from(coeffs, (c) => c.noise),
    };
  };
}
