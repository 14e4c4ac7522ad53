/**
 * mini-CLIP: the text tower (CLIPTextModelWithProjection) and the image tower
 * (CLIPVisionModelWithProjection) trained together with CLIP's symmetric
 * contrastive loss. Each batch holds one image of `batch` distinct concepts
 * with one of that image's captions, so no two pairs in a batch are of the
 * same concept (no false negatives), and concepts with many skin-tone
 * variants are not drawn more often than the others.
 */
import * as F from '../../core/graph/functional.ts';
import { Graph, type Tensor } from '../../core/graph/graph.ts';
import { clipImageEmbeds, clipTextEmbeds } from '../../core/nn/clip-model.ts';
import { parseClipTextConfig } from '../../core/nn/clip-text.ts';
import { parseClipVisionConfig } from '../../core/nn/clip-vision.ts';
import { torchDefaultInit } from '../../core/nn/init.ts';
import { ParamBinder } from '../../core/nn/params.ts';
import type { Feeds } from '../../core/runtime/session.ts';
import { Trainer } from '../../core/runtime/trainer.ts';
import type { ClipTokenizer } from '../../core/text/clip-tokenizer.ts';
import { encodeBatch, gatherImages, sampleDistinct, stepRng, type MiniDataset } from './data.ts';

export interface ClipStageOptions {
  textConfig: Record<string, unknown>;
  visionConfig: Record<string, unknown>;
  batch: number;
  /** Token positions trained (>= the longest caption); the causal tower makes the rest irrelevant to the pooled output. */
  textLength: number;
  lr: number;
  seed: number;
  threads?: number;
}

/** Keys of the text model's file; the rest (visual, logit scale) belong elsewhere. */
export const isTextKey = (k: string): boolean => k.startsWith('text_model.') || k === 'text_projection.weight';
export const isVisionKey = (k: string): boolean => k.startsWith('vision_model.') || k === 'visual_projection.weight';
export const LOGIT_SCALE = 'logit_scale';

export async function clipTrainer(o: ClipStageOptions) {
  const g = new Graph();
  const binder = new ParamBinder(g, () => undefined, { initialize: torchDefaultInit(o.seed) });
  const ids = g.input('input_ids', [o.batch, o.textLength], 'int64');
  const images = g.input('images', [o.batch, 3, 32, 32]);
  const root = binder.scope('');
  const text = clipTextEmbeds(root, parseClipTextConfig(o.textConfig), o.textConfig.projection_dim as number, ids);
  const image = clipImageEmbeds(root, parseClipVisionConfig(o.visionConfig), images);
  // CLIP's learned temperature, kept below 100 as in the paper.
  const logitScale = g.input(LOGIT_SCALE, []);
  const logits = F.mul(F.matmul(image, F.transpose(text, [1, 0])), F.exp(F.clip(logitScale, 0, Math.log(100))));
  const eye = g.constant(Float32Array.from({ length: o.batch * o.batch }, (_, i) => (i % (o.batch + 1) === 0 ? 1 : 0)), [o.batch, o.batch]);
  const ce = (l: Tensor, axis: number): Tensor => F.neg(F.div(F.sumAll(F.mul(F.logSoftmax(l, axis), eye)), o.batch));
  const loss = F.mul(F.add(ce(logits, 1), ce(logits, 0)), 0.5);
  const accuracy = F.meanAll(F.cast(F.equal(F.reduceMax(logits, [1], true), F.reduceSum(F.mul(logits, eye), [1], true)), 'float32'));
  binder.finish('mini-CLIP');
  const params: Record<string, { tensor: Tensor; init: Float32Array }> = {};
  for (const n of binder.trainableNames) params[n] = { tensor: g.byName(n)!, init: binder.initialValue(n) };
  params[LOGIT_SCALE] = { tensor: logitScale, init: Float32Array.of(Math.log(1 / 0.07)) };
  return Trainer.create({
    loss,
    params,
    outputs: { accuracy },
    optimizer: { kind: 'adamw', lr: o.lr, weightDecay: 0.1, betas: [0.9, 0.98], eps: 1e-6, maxGradNorm: 1 },
    session: { provider: 'cpu', threads: o.threads },
  });
}

/** Step `s`'s batch: distinct concepts, a random image of each, a random caption of that image. */
export function clipBatches(data: MiniDataset, tokenizer: ClipTokenizer, o: ClipStageOptions): (step: number) => Feeds {
  const pixels = new Float32Array(o.batch * 3 * 32 * 32);
  return (step) => {
    const rand = stepRng(o.seed, step);
    const concepts = sampleDistinct(rand, data.index.concepts.length, o.batch);
    const imageIds = concepts.map((c) => {
      const ims = data.index.concepts[c].imageIds;
      return ims[Math.floor(rand() * ims.length)];
    });
    const captions = imageIds.map((id) => {
      const cs = data.index.images[id].captions;
      return cs[Math.floor(rand() * cs.length)];
    });
    return { images: gatherImages(data, imageIds, pixels), input_ids: encodeBatch(tokenizer, captions, o.textLength) };
  };
}
