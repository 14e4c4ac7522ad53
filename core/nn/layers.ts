/**
 * The PyTorch layers the checkpoints are made of, reading their weights from
 * a Scope under the layer's own key names (`weight`, `bias`).
 */
import * as F from '../graph/functional.ts';
import type { Tensor } from '../graph/graph.ts';
import type { Scope } from './params.ts';

export function linear(s: Scope, x: Tensor, inFeatures: number, outFeatures: number, bias = true): Tensor {
  return F.linear(x, s.get('weight', [outFeatures, inFeatures]), bias ? s.get('bias', [outFeatures]) : undefined);
}

export function conv2d(s: Scope, x: Tensor, inChannels: number, outChannels: number, kernel: number, options: F.Conv2dOptions = {}, bias = true): Tensor {
  const groups = options.groups ?? 1;
  const w = s.get('weight', [outChannels, inChannels / groups, kernel, kernel]);
  return F.conv2d(x, w, bias ? s.get('bias', [outChannels]) : undefined, options);
}

export function groupNorm(s: Scope, x: Tensor, groups: number, eps: number): Tensor {
  const c = x.shape[1];
  return F.groupNorm(x, groups, s.get('weight', [c]), s.get('bias', [c]), eps);
}

export function layerNorm(s: Scope, x: Tensor, eps: number): Tensor {
  const d = x.shape[x.rank - 1];
  return F.layerNorm(x, s.get('weight', [d]), s.get('bias', [d]), eps);
}
