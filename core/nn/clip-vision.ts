/**
 * CLIPVisionModelWithProjection (transformers), the image tower of a CLIP
 * model: what diffusers keeps in a pipeline's `image_encoder/` folder. Scope
 * paths are the checkpoint keys:
 *
 *   vision_model.embeddings.{patch_embedding, class_embedding, position_embedding}
 *   vision_model.pre_layrnorm            (sic: transformers' spelling)
 *   vision_model.encoder.layers.{i}.*    (the text tower's CLIPEncoderLayer, not causal)
 *   vision_model.post_layernorm
 *   visual_projection
 */
import { GraphBuildError } from '../errors.ts';
import * as F from '../graph/functional.ts';
import type { Tensor } from '../graph/graph.ts';
import { clipEncoderLayer, readClipConfig } from './clip-text.ts';
import * as L from './layers.ts';
import type { Scope } from './params.ts';

/** transformers' CLIPVisionConfig keys the tower uses. */
export interface ClipVisionConfig {
  hidden_size: number;
  intermediate_size: number;
  projection_dim: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  num_channels: number;
  image_size: number;
  patch_size: number;
  hidden_act: 'quick_gelu' | 'gelu';
  layer_norm_eps: number;
}

/** openai/clip-vit-large-patch14's image tower. */
export const CLIP_VIT_L14_VISION_CONFIG: Readonly<ClipVisionConfig> = {
  hidden_size: 1024,
  intermediate_size: 4096,
  projection_dim: 768,
  num_hidden_layers: 24,
  num_attention_heads: 16,
  num_channels: 3,
  image_size: 224,
  patch_size: 14,
  hidden_act: 'quick_gelu',
  layer_norm_eps: 1e-5,
};

/** CLIPImageProcessor's normalisation (OpenAI's dataset statistics), applied to RGB in [0, 1]. */
export const CLIP_IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073] as const;
export const CLIP_IMAGE_STD = [0.26862954, 0.26130258, 0.27577711] as const;

/** A config.json object (CLIPVisionConfig.to_dict()) over ViT-L/14's values; every bad value is reported at once. */
export function parseClipVisionConfig(json: unknown, source = 'config.json'): ClipVisionConfig {
  return readClipConfig(json, CLIP_VIT_L14_VISION_CONFIG, source, 'vision', (cfg) =>
    cfg.image_size % cfg.patch_size === 0 ? [] : [`image_size ${cfg.image_size} is not a multiple of patch_size ${cfg.patch_size}`],
  );
}

export interface ClipVisionOutputs {
  /** [B, 1 + patches, D] before post_layernorm. */
  lastHiddenState: Tensor;
  /** [B, D]: post_layernorm of the class token. */
  pooled: Tensor;
  /** [B, projection_dim]: visual_projection(pooled), not normalised. */
  imageEmbeds: Tensor;
}

/** The tower over pixel values [B, C, H, W], already normalised; `scope` is the model root (above `vision_model`). */
export function clipVisionEncoder(scope: Scope, cfg: ClipVisionConfig, pixels: Tensor): ClipVisionOutputs {
  const [b, c, h, w] = pixels.shape;
  if (pixels.rank !== 4 || c !== cfg.num_channels || h !== cfg.image_size || w !== cfg.image_size) {
    throw new GraphBuildError(`clipVisionEncoder: pixels must be [batch, ${cfg.num_channels}, ${cfg.image_size}, ${cfg.image_size}], got [${pixels.shape.join(',')}]`);
  }
  const s = scope.scope('vision_model');
  const d = cfg.hidden_size;
  const grid = cfg.image_size / cfg.patch_size;
  const positions = grid * grid + 1;

  // 1. embeddings: class token, then one token per patch, plus learned positions
  const e = s.scope('embeddings');
  const patches = L.conv2d(e.scope('patch_embedding'), pixels, c, d, cfg.patch_size, { stride: cfg.patch_size }, false);
  const tokens = F.transpose(F.reshape(patches, [b, d, grid * grid]), [0, 2, 1]);
  const cls = F.expand(F.reshape(e.get('class_embedding', [d]), [1, 1, d]), [b, 1, d]);
  let x = F.add(F.concat([cls, tokens], 1), e.scope('position_embedding').get('weight', [positions, d]));

  // 2. pre-LN, encoder
  x = L.layerNorm(s.scope('pre_layrnorm'), x, cfg.layer_norm_eps);
  const layers = s.scope('encoder').scope('layers');
  for (let i = 0; i < cfg.num_hidden_layers; i++) x = clipEncoderLayer(layers.scope(i), cfg, x, false);

  // 3. pooled class token, projection
  const pooled = L.layerNorm(s.scope('post_layernorm'), F.reshape(F.slice(x, [1], [0], [1]), [b, d]), cfg.layer_norm_eps);
  const imageEmbeds = L.linear(scope.scope('visual_projection'), pooled, d, cfg.projection_dim, false);
  return { lastHiddenState: x, pooled, imageEmbeds };
}

/** RGB in [-1, 1] (the VAE's and the dataset's range) to CLIP's normalised input. */
export function clipPixelsFromSigned(image: Tensor): Tensor {
  const g = image.graph;
  const mean = g.constant(Float32Array.from(CLIP_IMAGE_MEAN), [1, 3, 1, 1]);
  const std = g.constant(Float32Array.from(CLIP_IMAGE_STD), [1, 3, 1, 1]);
  return F.div(F.sub(F.add(F.mul(image, 0.5), 0.5), mean), std);
}
