/**
 * The benchmark models, built on the graph API: a pre-LN transformer block
 * (CLIP text layer shape) and a UNet-like conv stack (GroupNorm/SiLU/conv3x3
 * residual blocks). bench/peers/torch_step.py builds the same in PyTorch.
 */
import * as F from '../core/graph/functional.ts';
import { Graph, type Tensor } from '../core/graph/graph.ts';

export interface BenchModel {
  graph: Graph;
  loss: Tensor;
  params: Record<string, Tensor>;
  /** Data inputs with their shapes. */
  data: Record<string, number[]>;
}

export interface TransformerConfig { kind: 'transformer'; width: number; seq: number; batch: number }
export interface ConvConfig { kind: 'conv'; channels: number; size: number; batch: number; blocks: number }
export type ModelConfig = TransformerConfig | ConvConfig;

export function buildModel(cfg: ModelConfig): BenchModel {
  return cfg.kind === 'transformer' ? transformerBlock(cfg) : convStack(cfg);
}

function transformerBlock({ width: d, seq, batch }: TransformerConfig): BenchModel {
  const g = new Graph();
  const heads = d / 64;
  const params: Record<string, Tensor> = {};
  const p = (name: string, shape: number[]) => (params[name] = g.input(name, shape));
  const x = g.input('x', [batch, seq, d]);
  const target = g.input('target', [batch, seq, d]);
  const lin = (name: string, h: Tensor, i: number, o: number) => F.linear(h, p(`${name}.weight`, [o, i]), p(`${name}.bias`, [o]));
  const ln = (name: string, h: Tensor) => F.layerNorm(h, p(`${name}.weight`, [d]), p(`${name}.bias`, [d]));
  const toHeads = (h: Tensor) => F.transpose(F.reshape(h, [batch, seq, heads, 64]), [0, 2, 1, 3]);

  let h = ln('layer_norm1', x);
  const attn = F.sdpa(toHeads(lin('q_proj', h, d, d)), toHeads(lin('k_proj', h, d, d)), toHeads(lin('v_proj', h, d, d)), { causal: true });
  h = F.add(x, lin('out_proj', F.reshape(F.transpose(attn, [0, 2, 1, 3]), [batch, seq, d]), d, d));
  const m = lin('fc2', F.quickGelu(lin('fc1', ln('layer_norm2', h), d, 4 * d)), 4 * d, d);
  h = F.add(h, m);
  return { graph: g, loss: F.mse(h, target), params, data: { x: [batch, seq, d], target: [batch, seq, d] } };
}

function convStack({ channels: c, size, batch, blocks }: ConvConfig): BenchModel {
  const g = new Graph();
  const params: Record<string, Tensor> = {};
  const p = (name: string, shape: number[]) => (params[name] = g.input(name, shape));
  const x = g.input('x', [batch, 4, size, size]);
  const target = g.input('target', [batch, 4, size, size]);
  const conv = (name: string, h: Tensor, i: number, o: number) => F.conv2d(h, p(`${name}.weight`, [o, i, 3, 3]), p(`${name}.bias`, [o]), { padding: 1 });
  const norm = (name: string, h: Tensor) => F.groupNorm(h, 32, p(`${name}.weight`, [c]), p(`${name}.bias`, [c]), 1e-5);

  let h = conv('conv_in', x, 4, c);
  for (let b = 0; b < blocks; b++) {
    const r = conv(`resnets.${b}.conv1`, F.silu(norm(`resnets.${b}.norm1`, h)), c, c);
    h = F.add(h, conv(`resnets.${b}.conv2`, F.silu(norm(`resnets.${b}.norm2`, r)), c, c));
  }
  h = conv('conv_out', F.silu(norm('conv_norm_out', h)), c, 4);
  return { graph: g, loss: F.mse(h, target), params, data: { x: [batch, 4, size, size], target: [batch, 4, size, size] } };
}
