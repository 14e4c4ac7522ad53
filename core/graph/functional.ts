/**
 * The graph-building API. Primitives are one line each (a node of the op
 * table); everything else is composed from them, so it needs no gradient
 * rule of its own.
 */
import { GraphBuildError } from '../errors.ts';
import { FLOAT_DTYPES, numel, type DType, type Shape, type Tensor } from './graph.ts';
import { normAxes, normAxis } from './shape.ts';

export type Operand = Tensor | number;

function lift(a: Operand, like: Tensor): Tensor {
  return typeof a === 'number' ? like.graph.scalar(a, like.dtype) : a;
}

function binary(op: 'add' | 'sub' | 'mul' | 'div' | 'pow', a: Operand, b: Operand): Tensor {
  if (typeof a === 'number' && typeof b === 'number') throw new GraphBuildError(`${op}: at least one operand must be a tensor`);
  const ta = typeof a === 'number' ? lift(a, b as Tensor) : a;
  const tb = lift(b, ta);
  return ta.graph.node(op, [ta, tb]);
}

// --- elementwise -----------------------------------------------------------
export const add = (a: Operand, b: Operand): Tensor => binary('add', a, b);
export const sub = (a: Operand, b: Operand): Tensor => binary('sub', a, b);
export const mul = (a: Operand, b: Operand): Tensor => binary('mul', a, b);
export const div = (a: Operand, b: Operand): Tensor => binary('div', a, b);
export const pow = (a: Operand, b: Operand): Tensor => binary('pow', a, b);
export const neg = (x: Tensor): Tensor => x.graph.node('neg', [x]);
export const exp = (x: Tensor): Tensor => x.graph.node('exp', [x]);
export const log = (x: Tensor): Tensor => x.graph.node('log', [x]);
export const sqrt = (x: Tensor): Tensor => x.graph.node('sqrt', [x]);
export const reciprocal = (x: Tensor): Tensor => x.graph.node('reciprocal', [x]);
export const rsqrt = (x: Tensor): Tensor => reciprocal(sqrt(x));
export const abs = (x: Tensor): Tensor => x.graph.node('abs', [x]);
export const sign = (x: Tensor): Tensor => x.graph.node('sign', [x]);
export const sigmoid = (x: Tensor): Tensor => x.graph.node('sigmoid', [x]);
export const tanh = (x: Tensor): Tensor => x.graph.node('tanh', [x]);
export const erf = (x: Tensor): Tensor => x.graph.node('erf', [x]);
export const sin = (x: Tensor): Tensor => x.graph.node('sin', [x]);
export const cos = (x: Tensor): Tensor => x.graph.node('cos', [x]);
export const square = (x: Tensor): Tensor => mul(x, x);

export const silu = (x: Tensor): Tensor => mul(x, sigmoid(x));
/** CLIP's activation: x * sigmoid(1.702 x). */
export const quickGelu = (x: Tensor): Tensor => mul(x, sigmoid(mul(x, 1.702)));
/** Exact (erf) GELU, written in the order onnxruntime's Gelu fusion matches. */
export const gelu = (x: Tensor): Tensor => mul(mul(x, add(erf(div(x, Math.SQRT2)), 1)), 0.5);
/** where() rather than max(x, 0): the gradient at exactly 0 is 0, as in PyTorch. */
export const relu = (x: Tensor): Tensor => where(greater(x, 0), x, zerosLike(x));

export const clip = (x: Tensor, min: number, max: number): Tensor => x.graph.node('clip', [x], { min, max });
export const cast = (x: Tensor, to: DType): Tensor => (x.dtype === to ? x : x.graph.node('cast', [x], { to }));
/** Identity forward, no gradient backward. */
export const stopGradient = (x: Tensor): Tensor => x.graph.node('stop_gradient', [x]);
export const isFinite = (x: Tensor): Tensor => x.graph.node('is_finite', [x]);

// --- comparisons and selection ---------------------------------------------
const compare = (op: 'less' | 'greater' | 'equal' | 'less_equal' | 'greater_equal') => (a: Operand, b: Operand): Tensor => {
  const ta = typeof a === 'number' ? lift(a, b as Tensor) : a;
  return ta.graph.node(op, [ta, lift(b, ta)]);
};
export const less = compare('less');
export const greater = compare('greater');
export const equal = compare('equal');
export const lessEqual = compare('less_equal');
export const greaterEqual = compare('greater_equal');
export const where = (cond: Tensor, a: Operand, b: Operand): Tensor => {
  const ta = typeof a === 'number' ? lift(a, b as Tensor) : a;
  return cond.graph.node('where', [cond, ta, lift(b, ta)]);
};

// --- creation ---------------------------------------------------------------
export const fill = (like: Tensor, shape: Shape, value: number, dtype: DType = like.dtype): Tensor =>
  like.graph.node('fill', [], { shape: [...shape], value, dtype });
export const zerosLike = (x: Tensor): Tensor => fill(x, x.shape, 0);
export const onesLike = (x: Tensor): Tensor => fill(x, x.shape, 1);

// --- shape ------------------------------------------------------------------
export const reshape = (x: Tensor, shape: readonly number[]): Tensor => {
  const known = shape.filter((d) => d !== -1);
  const target = shape.map((d) => (d === -1 ? x.size / Math.max(1, numel(known)) : d));
  if (shape.filter((d) => d === -1).length > 1) throw new GraphBuildError(`reshape: more than one -1 in [${shape.join(',')}]`);
  if (target.every((d, i) => d === x.shape[i]) && target.length === x.rank) return x;
  return x.graph.node('reshape', [x], { shape: target });
};
/** Transposes compose: transpose(transpose(x, a), b) is one transpose of x (or x itself). */
export const transpose = (x: Tensor, perm: readonly number[]): Tensor => {
  if (perm.every((p, i) => p === i)) return x;
  if (x.op === 'transpose') {
    const inner = x.attrs.perm as number[];
    return transpose(x.inputs[0], perm.map((p) => inner[p]));
  }
  return x.graph.node('transpose', [x], { perm: [...perm] });
};
/** Swaps the last two axes. */
export const transposeLast = (x: Tensor): Tensor => {
  const perm = x.shape.map((_, i) => i);
  [perm[x.rank - 2], perm[x.rank - 1]] = [perm[x.rank - 1], perm[x.rank - 2]];
  return transpose(x, perm);
};
export const expand = (x: Tensor, shape: readonly number[]): Tensor =>
  x.rank === shape.length && x.shape.every((d, i) => d === shape[i]) ? x : x.graph.node('expand', [x], { shape: [...shape] });
export const concat = (xs: readonly Tensor[], axis: number): Tensor => {
  if (xs.length === 0) throw new GraphBuildError('concat: no inputs');
  return xs.length === 1 ? xs[0] : xs[0].graph.node('concat', xs, { axis: normAxisOrThrow('concat', axis, xs[0].rank) });
};
/** x[starts:ends] along `axes` (step 1). Ends past the size are clamped. */
export const slice = (x: Tensor, axes: readonly number[], starts: readonly number[], ends: readonly number[]): Tensor => {
  const ax = axes.map((a) => normAxisOrThrow('slice', a, x.rank));
  const st = starts.map((s, i) => clampIndex(s, x.shape[ax[i]]));
  const en = ends.map((e, i) => clampIndex(e, x.shape[ax[i]]));
  return x.graph.node('slice', [x], { axes: ax, starts: st, ends: en });
};
/** Splits along `axis` into pieces of the given sizes (or n equal pieces). */
export const split = (x: Tensor, axis: number, sizes: number | readonly number[]): Tensor[] => {
  const a = normAxisOrThrow('split', axis, x.rank);
  const parts = typeof sizes === 'number' ? new Array<number>(sizes).fill(x.shape[a] / sizes) : sizes;
  if (parts.some((p) => !Number.isInteger(p)) || parts.reduce((s, p) => s + p, 0) !== x.shape[a]) {
    throw new GraphBuildError(`split: sizes [${parts.join(',')}] do not add up to ${x.shape[a]} (axis ${a} of [${x.shape.join(',')}])`);
  }
  let at = 0;
  return parts.map((p) => slice(x, [a], [at], [(at += p)]));
};
/** Pads with a constant; `pads` is [begin_0, ..., begin_n, end_0, ..., end_n] as in ONNX. */
export const pad = (x: Tensor, pads: readonly number[], value = 0): Tensor =>
  pads.every((p) => p === 0) ? x : x.graph.node('pad', [x], { pads: [...pads], value });
export const gather = (x: Tensor, indices: Tensor, axis = 0): Tensor =>
  x.graph.node('gather', [x, indices], { axis: normAxisOrThrow('gather', axis, x.rank) });
/** base with `updates` added at `indices` along `axis` (the adjoint of gather). */
export const indexAdd = (base: Tensor, indices: Tensor, updates: Tensor, axis = 0): Tensor =>
  base.graph.node('index_add', [base, indices, updates], { axis: normAxisOrThrow('index_add', axis, base.rank) });

// --- reductions ---------------------------------------------------------------
const reduce = (op: 'reduce_sum' | 'reduce_mean' | 'reduce_max') => (x: Tensor, axes: readonly number[], keepdims = false): Tensor => {
  let ax: number[];
  try {
    ax = normAxes(axes, x.rank);
  } catch (e) {
    throw new GraphBuildError(`${op}([${x.shape.join(',')}]): ${(e as Error).message}`);
  }
  if (ax.length === 0) return x;
  return x.graph.node(op, [x], { axes: ax, keepdims });
};
export const reduceSum = reduce('reduce_sum');
export const reduceMean = reduce('reduce_mean');
export const reduceMax = reduce('reduce_max');
export const sumAll = (x: Tensor): Tensor => reduceSum(x, x.shape.map((_, i) => i));
export const meanAll = (x: Tensor): Tensor => reduceMean(x, x.shape.map((_, i) => i));
export const softmax = (x: Tensor, axis = -1): Tensor => x.graph.node('softmax', [x], { axis: normAxisOrThrow('softmax', axis, x.rank) });
export const logSoftmax = (x: Tensor, axis = -1): Tensor =>
  x.graph.node('log_softmax', [x], { axis: normAxisOrThrow('log_softmax', axis, x.rank) });

// --- linear algebra -------------------------------------------------------------
export const matmul = (a: Tensor, b: Tensor): Tensor => a.graph.node('matmul', [a, b]);
/** y = x W^T + b, with W stored [out, in] as in PyTorch checkpoints. */
export const linear = (x: Tensor, weight: Tensor, bias?: Tensor): Tensor => {
  const y = matmul(x, transpose(weight, [1, 0]));
  return bias ? add(y, bias) : y;
};

export interface Conv2dOptions {
  stride?: number | readonly [number, number];
  /** p, [ph, pw], or [top, left, bottom, right] (asymmetric). */
  padding?: number | readonly number[];
  dilation?: number | readonly [number, number];
  groups?: number;
}

export function convAttrs(o: Conv2dOptions = {}): { strides: number[]; pads: number[]; dilations: number[]; group: number } {
  const pair = (v: number | readonly number[] | undefined, d: number): number[] => (v === undefined ? [d, d] : typeof v === 'number' ? [v, v] : [...v]);
  const p = o.padding ?? 0;
  const pads = typeof p === 'number' ? [p, p, p, p] : p.length === 2 ? [p[0], p[1], p[0], p[1]] : [...p];
  if (pads.length !== 4) throw new GraphBuildError(`conv2d: padding must be p, [ph, pw] or [top, left, bottom, right], got [${p}]`);
  return { strides: pair(o.stride, 1), pads, dilations: pair(o.dilation, 1), group: o.groups ?? 1 };
}

export const conv2d = (x: Tensor, weight: Tensor, bias?: Tensor, options?: Conv2dOptions): Tensor =>
  x.graph.node('conv2d', bias ? [x, weight, bias] : [x, weight], convAttrs(options));

/** The transpose (adjoint) of conv2d with the same weight; `outSize` picks the output H, W. */
export const convTranspose2d = (x: Tensor, weight: Tensor, outSize: readonly [number, number], options?: Conv2dOptions): Tensor =>
  x.graph.node('conv_transpose2d', [x, weight], { ...convAttrs(options), out_size: [...outSize] });

/** d(conv2d(x, W))/dW contracted with `gradOut`: the weight gradient of a convolution. */
export const conv2dWeightGrad = (x: Tensor, gradOut: Tensor, kernel: readonly [number, number], options?: Conv2dOptions): Tensor =>
  x.graph.node('conv2d_weight_grad', [x, gradOut], { ...convAttrs(options), kernel: [...kernel] });

// --- normalisation ----------------------------------------------------------------
/**
 * (x - mean) / sqrt(var + eps) over the axes from `axis` to the end, then
 * optional elementwise scale and bias over those axes.
 */
export const normalize = (x: Tensor, axis: number, eps: number, scale?: Tensor, bias?: Tensor): Tensor => {
  if (bias && !scale) throw new GraphBuildError('normalize: a bias needs a scale');
  const inputs = [x, ...(scale ? [scale] : []), ...(bias ? [bias] : [])];
  return x.graph.node('normalize', inputs, { axis: normAxisOrThrow('normalize', axis, x.rank), eps });
};
export const layerNorm = (x: Tensor, weight: Tensor, bias: Tensor, eps = 1e-5): Tensor => normalize(x, x.rank - weight.rank, eps, weight, bias);

/** GroupNorm over [N, C, ...spatial]: statistics per (sample, group), affine per channel. */
export const groupNorm = (x: Tensor, groups: number, weight: Tensor, bias: Tensor, eps = 1e-5): Tensor => {
  const [n, c] = x.shape;
  if (c % groups !== 0) throw new GraphBuildError(`groupNorm: ${c} channels do not split into ${groups} groups`);
  const normed = reshape(normalize(reshape(x, [n, groups, -1]), 2, eps), x.shape);
  const affine = [c, ...x.shape.slice(2).map(() => 1)];
  return add(mul(normed, reshape(weight, affine)), reshape(bias, affine));
};

// --- resampling -------------------------------------------------------------------
/** Nearest-neighbour upsampling of the last two axes by an integer factor. */
export const upsampleNearest = (x: Tensor, factor: number): Tensor => x.graph.node('upsample_nearest', [x], { factor });

/**
 * Nearest-neighbour resize of the last two axes to (outH, outW), with
 * PyTorch's index rule floor(i * in / out). Integer factors use the 2x op.
 */
export const resizeNearest = (x: Tensor, outH: number, outW: number): Tensor => {
  const [h, w] = x.shape.slice(-2);
  if (outH === h && outW === w) return x;
  if (outH % h === 0 && outW % w === 0 && outH / h === outW / w) return upsampleNearest(x, outH / h);
  const index = (inSize: number, outSize: number): Tensor =>
    x.graph.constant(BigInt64Array.from({ length: outSize }, (_, i) => BigInt(Math.min(inSize - 1, Math.floor((i * inSize) / outSize)))), [outSize], 'int64');
  return gather(gather(x, index(h, outH), x.rank - 2), index(w, outW), x.rank - 1);
};

// --- attention ----------------------------------------------------------------------
export interface AttentionOptions {
  scale?: number;
  causal?: boolean;
  /**
   * Recompute the attention probabilities in the backward pass instead of
   * keeping them from the forward pass. Default: when they take 16 MB or more
   * (SD's 64x64 self-attention keeps 512 MB per layer otherwise).
   */
  recompute?: boolean;
}

const RECOMPUTE_BYTES = 16 * 1024 * 1024;

function attentionAttrs(q: Tensor, k: Tensor, o: AttentionOptions): { scale: number; causal: boolean; recompute: boolean } {
  const probsBytes = (q.size / q.shape[q.rank - 1]) * k.shape[k.rank - 2] * 4;
  return { scale: o.scale ?? 1 / Math.sqrt(q.shape[q.rank - 1]), causal: o.causal ?? false, recompute: o.recompute ?? probsBytes >= RECOMPUTE_BYTES };
}

/** softmax(q k^T * scale [+ causal mask]) over [..., Lq, Lk]. */
export const attentionProbs = (q: Tensor, k: Tensor, o: AttentionOptions = {}): Tensor => q.graph.node('attention_probs', [q, k], attentionAttrs(q, k, o));

/** Scaled dot-product attention over [..., L, D]; one op so it can map to a fused kernel. */
export const sdpa = (q: Tensor, k: Tensor, v: Tensor, o: AttentionOptions = {}): Tensor => q.graph.node('sdpa', [q, k, v], attentionAttrs(q, k, o));

// --- losses ---------------------------------------------------------------------------
export const mse = (a: Tensor, b: Tensor): Tensor => meanAll(square(sub(a, b)));

// --- helpers ------------------------------------------------------------------------------
function normAxisOrThrow(op: string, axis: number, rank: number): number {
  try {
    return normAxis(axis, rank);
  } catch (e) {
    throw new GraphBuildError(`${op}: ${(e as Error).message}`);
  }
}

function clampIndex(i: number, size: number): number {
  const j = i < 0 ? i + size : i;
  return Math.max(0, Math.min(size, j));
}

export function isFloat(x: Tensor): boolean {
  return FLOAT_DTYPES.has(x.dtype);
}
