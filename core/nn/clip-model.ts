/**
 * CLIPModel's two embedding heads over the towers: text_projection of the
 * pooled text state and visual_projection of the pooled image state, each
 * normalised to unit length (what CLIP compares by dot product).
 */
import * as F from '../graph/functional.ts';
import type { Tensor } from '../graph/graph.ts';
import { clipTextEncoder, type ClipTextConfig } from './clip-text.ts';
import { clipPixelsFromSigned, clipVisionEncoder, type ClipVisionConfig } from './clip-vision.ts';
import * as L from './layers.ts';
import type { Scope } from './params.ts';

/** L2-normalised rows of [N, D]. */
export function unitRows(x: Tensor): Tensor {
  return F.div(x, F.sqrt(F.add(F.reduceSum(F.square(x), [1], true), 1e-12)));
}

/** CLIPTextModelWithProjection over ids [B, L]; `root` holds `text_model.*` and `text_projection`. */
export function clipTextEmbeds(root: Scope, cfg: ClipTextConfig, projectionDim: number, ids: Tensor): Tensor {
  const { pooled } = clipTextEncoder(root.scope('text_model'), cfg, ids);
  return unitRows(L.linear(root.scope('text_projection'), pooled, cfg.hidden_size, projectionDim, false));
}

/** CLIPVisionModelWithProjection over RGB images in [-1, 1]; `root` holds `vision_model.*` and `visual_projection`. */
export function clipImageEmbeds(root: Scope, cfg: ClipVisionConfig, images: Tensor): Tensor {
  return unitRows(clipVisionEncoder(root, cfg, clipPixelsFromSigned(images)).imageEmbeds);
}
