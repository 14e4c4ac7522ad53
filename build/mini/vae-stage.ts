/**
 * The AutoencoderKL of lethe-mini: encode, sample the latent with the
 * reparameterisation trick, decode; L1 reconstruction plus a small KL term
 * (SD's VAE adds a perceptual loss and a discriminator, which emoji at 32 px
 * do not need). The scaling factor is measured after training, over the
 * whole dataset, so the latents the UNet sees have unit variance.
 */
import * as F from '../../core/graph/functional.ts';
import { Graph } from '../../core/graph/graph.ts';
import { torchDefaultInit } from '../../core/nn/init.ts';
import { ParamBinder, type KeyResolver } from '../../core/nn/params.ts';
import { parseVaeConfig, vaeDecode, vaeEncode } from '../../core/nn/vae.ts';
import { TorchCompatibleGenerator } from '../../core/runtime/random.ts';
import { Session, type Feeds } from '../../core/runtime/session.ts';
import { Trainer } from '../../core/runtime/trainer.ts';
import { emitOnnx } from '../../core/graph/onnx.ts';
import { gatherImages, IMAGE_VALUES, stepRng, type MiniDataset } from './data.ts';

export interface VaeStageOptions {
  config: Record<string, unknown>;
  batch: number;
  lr: number;
  klWeight: number;
  seed: number;
  threads?: number;
}

export async function vaeTrainer(o: VaeStageOptions) {
  const cfg = parseVaeConfig(o.config);
  const g = new Graph();
  const binder = new ParamBinder(g, () => undefined, { initialize: torchDefaultInit(o.seed) });
  const images = g.input('images', [o.batch, 3, 32, 32]);
  const f = 2 ** (cfg.block_out_channels.length - 1);
  const eps = g.input('eps', [o.batch, cfg.latent_channels, 32 / f, 32 / f]);
  const root = binder.scope('');
  const { mean, logvar, std } = vaeEncode(root, cfg, images);
  const z = F.add(mean, F.mul(std, eps));
  const recon = vaeDecode(root, cfg, z);
  binder.finish('VAE');
  const l1 = F.meanAll(F.abs(F.sub(recon, images)));
  // KL(N(mean, var) || N(0, 1)) per latent value.
  const kl = F.mul(F.meanAll(F.sub(F.add(F.square(mean), F.exp(logvar)), F.add(logvar, 1))), 0.5);
  const loss = F.add(l1, F.mul(kl, o.klWeight));
  const params = Object.fromEntries(binder.trainableNames.map((n) => [n, { tensor: g.byName(n)!, init: binder.initialValue(n) }]));
  return Trainer.create({
    loss,
    params,
    outputs: { l1, kl },
    optimizer: { kind: 'adamw', lr: o.lr, weightDecay: 0, maxGradNorm: 1 },
    session: { provider: 'cpu', threads: o.threads },
  });
}

export function vaeBatches(data: MiniDataset, cfgJson: Record<string, unknown>, o: VaeStageOptions): (step: number) => Feeds {
  const cfg = parseVaeConfig(cfgJson);
  const f = 2 ** (cfg.block_out_channels.length - 1);
  const latentValues = cfg.latent_channels * (32 / f) ** 2;
  const pixels = new Float32Array(o.batch * IMAGE_VALUES);
  return (step) => {
    const rand = stepRng(o.seed, step);
    const ids = Array.from({ length: o.batch }, () => Math.floor(rand() * data.count));
    return { images: gatherImages(data, ids, pixels), eps: new TorchCompatibleGenerator(o.seed * 1_000_003 + step).randn(o.batch * latentValues) };
  };
}

/**
 * Encoder means of every image (the UNet's training data) and the scaling
 * factor 1 / std of all their values, with the weights at `resolve`.
 */
export async function encodeDataset(data: MiniDataset, cfgJson: Record<string, unknown>, resolve: KeyResolver, batch = 256): Promise<{ mean: Float32Array; std: Float32Array; scalingFactor: number }> {
  const cfg = parseVaeConfig(cfgJson);
  const g = new Graph();
  const binder = new ParamBinder(g, resolve);
  const images = g.input('images', [batch, 3, 32, 32]);
  const dist = vaeEncode(binder.scope(''), cfg, images);
  binder.finish('VAE');
  const session = await Session.create(emitOnnx({ mean: dist.mean, std: dist.std }), { provider: 'cpu' });
  const per = dist.mean.size / batch;
  const mean = new Float32Array(data.count * per);
  const std = new Float32Array(data.count * per);
  const pixels = new Float32Array(batch * IMAGE_VALUES);
  try {
    for (let start = 0; start < data.count; start += batch) {
      const ids = Array.from({ length: batch }, (_, i) => Math.min(start + i, data.count - 1));
      const out = await session.run({ images: gatherImages(data, ids, pixels) });
      const n = Math.min(batch, data.count - start);
      mean.set((out.mean.data as Float32Array).subarray(0, n * per), start * per);
      std.set((out.std.data as Float32Array).subarray(0, n * per), start * per);
    }
  } finally {
    await session.release();
  }
  return { mean, std, scalingFactor: 1 / Math.sqrt(await latentVariance(mean, std)) };
}

/** The variance of sampled latents, var(mean) + E[std^2], as SD measured it on samples. */
async function latentVariance(mean: Float32Array, std: Float32Array): Promise<number> {
  const g = new Graph();
  const m = g.input('mean', [mean.length]);
  const sd = g.input('std', [std.length]);
  const variance = F.add(F.meanAll(F.square(F.sub(m, F.meanAll(m)))), F.meanAll(F.square(sd)));
  const session = await Session.create(emitOnnx({ variance }), { provider: 'cpu' });
  try {
    return (await session.run({ mean, std })).variance.data[0] as number;
  } finally {
    await session.release();
  }
}
