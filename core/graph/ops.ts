/**
 * The op table. Each primitive has, side by side: its shape rule (`infer`),
 * its ONNX lowering (`emit`) and its vector-Jacobian product (`vjp`), which
 * returns one gradient per input or null where there is none. The autodiff
 * driver (autodiff.ts) un-broadcasts, sums fan-out and checks arity, so the
 * rules below stay one line where they can.
 */
import * as F from './functional.ts';
import { FLOAT_DTYPES, numel, type Attrs, type DType, type InferredType, type Shape, type Tensor } from './graph.ts';
import { broadcastShapes, convOutSize, inversePermutation, sameShape } from './shape.ts';

/** An ONNX attribute value, tagged by its ONNX type. */
export type OnnxAttr =
  | { i: number }
  | { f: number }
  | { s: string }
  | { ints: readonly number[] }
  | { floats: readonly number[] }
  | { tensor: { dtype: DType; shape: Shape; data: ArrayBufferView } };

export interface EmitContext {
  /** Adds an ONNX node (identical nodes are emitted once) and returns its output names. */
  node(opType: string, inputs: readonly string[], attrs?: Record<string, OnnxAttr>, outputs?: number, domain?: string): string[];
  /** The ONNX value of an already emitted tensor. */
  valueOf(t: Tensor): string;
  /** A 1-D int64 initializer. */
  int64(values: readonly number[]): string;
  /** A 0-d initializer of the given dtype. */
  scalar(value: number, dtype: DType): string;
  /** A float32 initializer. */
  float32(data: Float32Array, shape: Shape): string;
}

export interface OpDef {
  infer(inputs: readonly Tensor[], attrs: Attrs): InferredType;
  emit(ctx: EmitContext, y: Tensor, inputs: readonly string[]): string;
  /** null: the op has no gradient rule (the driver names it if one is needed). */
  vjp: ((g: Tensor, y: Tensor) => (Tensor | null)[]) | null;
}

// --- attribute helpers --------------------------------------------------------
const i = (v: number): OnnxAttr => ({ i: v });
const f = (v: number): OnnxAttr => ({ f: v });
const ints = (v: readonly number[]): OnnxAttr => ({ ints: v });
const num = (a: Attrs, k: string): number => a[k] as number;
const nums = (a: Attrs, k: string): number[] => a[k] as number[];
const ONNX_DTYPE: Record<DType, number> = { float32: 1, uint8: 2, int32: 6, int64: 7, bool: 9, float16: 10, bfloat16: 16 };
export const onnxDType = (d: DType): number => ONNX_DTYPE[d];

// --- shape rules ----------------------------------------------------------------
function requireFloat(xs: readonly Tensor[]): void {
  for (const x of xs) if (!FLOAT_DTYPES.has(x.dtype)) throw new Error(`needs floating-point inputs, got ${x.dtype}`);
}
function sameDtype(xs: readonly Tensor[]): DType {
  const d = xs[0].dtype;
  for (const x of xs) if (x.dtype !== d) throw new Error(`input dtypes differ (${xs.map((t) => t.dtype).join(', ')}); cast first`);
  return d;
}
const arity = (xs: readonly Tensor[], ...n: number[]): void => {
  if (!n.includes(xs.length)) throw new Error(`takes ${n.join(' or ')} inputs, got ${xs.length}`);
};
const same = (xs: readonly Tensor[]): InferredType => (requireFloat(xs), { shape: xs[0].shape, dtype: xs[0].dtype });
const broadcast = (xs: readonly Tensor[]): InferredType => ({ shape: broadcastShapes(xs[0].shape, xs[1].shape), dtype: sameDtype(xs) });
const broadcastFloat = (xs: readonly Tensor[]): InferredType => (requireFloat(xs), broadcast(xs));
const compare = (xs: readonly Tensor[]): InferredType => ({ shape: broadcast(xs).shape, dtype: 'bool' });
const noGrad = (n: number) => (): null[] => new Array<null>(n).fill(null);

function reduced(x: Tensor, axes: readonly number[], keepdims: boolean): number[] {
  return keepdims ? x.shape.map((d, k) => (axes.includes(k) ? 1 : d)) : x.shape.filter((_, k) => !axes.includes(k));
}
/** Reshapes a reduced gradient back to keepdims form and broadcasts it to x. */
function unreduce(g: Tensor, x: Tensor, axes: readonly number[]): Tensor {
  return F.expand(F.reshape(g, reduced(x, axes, true)), x.shape);
}
const range = (a: number, b: number): number[] => Array.from({ length: b - a }, (_, k) => a + k);

// --- emission helpers -------------------------------------------------------------
export const MS_DOMAIN = 'com.microsoft';

/** A transpose that only swaps the last two axes (and has rank >= 2): MatMul can read it in place. */
export function swapsLastTwo(t: Tensor): boolean {
  if (t.op !== 'transpose' || t.rank < 2) return false;
  const perm = t.attrs.perm as number[];
  return perm.every((p, k) => (k < t.rank - 2 ? p === k : k === t.rank - 2 ? p === t.rank - 1 : p === t.rank - 2));
}

const simple =
  (opType: string, attrs: (y: Tensor) => Record<string, OnnxAttr> = () => ({})) =>
  (ctx: EmitContext, y: Tensor, ins: readonly string[]): string =>
    ctx.node(opType, ins, attrs(y))[0];

function onesOf(ctx: EmitContext, shape: Shape, dtype: DType): string {
  const value = { dtype, shape: [1], data: dtype === 'float32' ? new Float32Array([1]) : new Uint16Array([dtype === 'float16' ? 0x3c00 : 0x3f80]) };
  return ctx.node('ConstantOfShape', [ctx.int64(shape)], { value: { tensor: value } })[0];
}

function layerNormNode(ctx: EmitContext, y: Tensor, ins: readonly string[]): string[] {
  const x = y.inputs[0];
  const axis = num(y.attrs, 'axis');
  const scale = ins[1] ?? onesOf(ctx, x.shape.slice(axis), x.dtype);
  return ctx.node('LayerNormalization', [ins[0], scale, ...ins.slice(2)], { axis: i(axis), epsilon: f(num(y.attrs, 'eps')), stash_type: i(1) }, 3);
}

function causalMask(lq: number, lk: number): Float32Array {
  const m = new Float32Array(lq * lk);
  for (let r = 0; r < lq; r++) for (let c = 0; c < lk; c++) if (c > r + (lk - lq)) m[r * lk + c] = -Infinity;
  return m;
}

function attentionProbsNode(ctx: EmitContext, q: Tensor, k: Tensor, qName: string, kName: string, attrs: Attrs): string {
  const scale = num(attrs, 'scale');
  // The scale rides on the product (alpha) and k is read transposed in place. The recompute
  // variant (backward of a large attention) scales q first: the same values by a different
  // expression, so no CSE pass merges it with the forward probabilities, which are then freed.
  let s = attrs.recompute
    ? ctx.node('FusedMatMul', [ctx.node('Mul', [qName, ctx.scalar(scale, q.dtype)])[0], kName], { transA: i(0), transB: i(1), alpha: f(1) }, 1, MS_DOMAIN)[0]
    : ctx.node('FusedMatMul', [qName, kName], { transA: i(0), transB: i(1), alpha: f(scale) }, 1, MS_DOMAIN)[0];
  if (attrs.causal) {
    const lq = q.shape[q.rank - 2];
    const lk = k.shape[k.rank - 2];
    s = ctx.node('Add', [s, ctx.float32(causalMask(lq, lk), [lq, lk])])[0];
  }
  return ctx.node('Softmax', [s], { axis: i(-1) })[0];
}

/** Gradients of attention_probs wrt q and k, given dL/dp. */
function attentionProbsVjp(dp: Tensor, p: Tensor, q: Tensor, k: Tensor, scale: number): [Tensor, Tensor] {
  const ds = F.mul(F.mul(p, F.sub(dp, F.reduceSum(F.mul(dp, p), [-1], true))), scale);
  return [F.matmul(ds, k), F.matmul(F.transposeLast(ds), q)];
}

/**
 * Weight gradient without a convolution: for each kernel offset (a, b) the
 * strided window of the padded input is contracted with the output gradient
 * in one MatMul ([n, o, P] x [n, P, c]); the kh*kw small results are stacked.
 * Several times faster on CPU than the convolution formulation, whose
 * "kernel" is the whole output gradient, and no 9x-input concat is built.
 */
function weightGradIm2col(ctx: EmitContext, y: Tensor, ins: readonly string[]): string {
  const [x, gy] = y.inputs;
  const [n, c] = x.shape;
  const [, o, ho, wo] = gy.shape;
  const [kh, kw] = nums(y.attrs, 'kernel');
  const [sh, sw] = nums(y.attrs, 'strides');
  const [dh, dw] = nums(y.attrs, 'dilations');
  const [pt, pl, pb, pr] = nums(y.attrs, 'pads');
  const [h, w] = x.shape.slice(2);
  const [hp, wp] = [h + pt + pb, w + pl + pr];
  // At stride 1, run over rows of the padded width: each kernel offset is then one contiguous
  // range of the flattened input (a memcpy rather than a strided 2-D copy); the extra columns
  // meet zeros padded onto the output gradient.
  const contiguous = sh === 1 && sw === 1 && (kh - 1) * dh + ho <= hp;
  const padded = pt || pl || pb || pr || contiguous ? ctx.node('Pad', [ins[0], ctx.int64([0, 0, pt, pl, 0, 0, pb + (contiguous ? 1 : 0), pr]), ctx.scalar(0, x.dtype)], { mode: { s: 'constant' } })[0] : ins[0];
  const flatX = contiguous ? ctx.node('Reshape', [padded, ctx.int64([n, c, (hp + 1) * wp])])[0] : padded;
  const gWide = contiguous && wp > wo ? ctx.node('Pad', [ins[1], ctx.int64([0, 0, 0, 0, 0, 0, 0, wp - wo]), ctx.scalar(0, x.dtype)], { mode: { s: 'constant' } })[0] : ins[1];
  const positions = contiguous ? ho * wp : ho * wo;
  const g2 = ctx.node('Reshape', [gWide, ctx.int64([n, o, positions])])[0];
  const perOffset: string[] = [];
  for (let a = 0; a < kh; a++) {
    for (let b = 0; b < kw; b++) {
      let cols: string;
      if (contiguous) {
        const start = a * dh * wp + b * dw;
        cols = ctx.node('Slice', [flatX, ctx.int64([start]), ctx.int64([start + positions]), ctx.int64([2])])[0];
      } else {
        const starts = [a * dh, b * dw];
        const ends = [a * dh + (ho - 1) * sh + 1, b * dw + (wo - 1) * sw + 1];
        const window = ctx.node('Slice', [padded, ctx.int64(starts), ctx.int64(ends), ctx.int64([2, 3]), ctx.int64([sh, sw])])[0];
        cols = ctx.node('Reshape', [window, ctx.int64([n, c, ho * wo])])[0];
      }
      let d = ctx.node('MatMul', [g2, ctx.node('Transpose', [cols], { perm: ints([0, 2, 1]) })[0]])[0]; // [n, o, c]
      d = n > 1 ? ctx.node('ReduceSum', [d, ctx.int64([0])], { keepdims: i(0) })[0] : ctx.node('Reshape', [d, ctx.int64([o, c])])[0];
      perOffset.push(ctx.node('Unsqueeze', [d, ctx.int64([2])])[0]); // [o, c, 1]
    }
  }
  const stacked = perOffset.length > 1 ? ctx.node('Concat', perOffset, { axis: i(2) })[0] : perOffset[0]; // [o, c, kh*kw]
  return ctx.node('Reshape', [stacked, ctx.int64([o, c, kh, kw])])[0];
}

function convOpts(a: Attrs): F.Conv2dOptions {
  const s = nums(a, 'strides');
  const d = nums(a, 'dilations');
  return { stride: [s[0], s[1]], padding: nums(a, 'pads'), dilation: [d[0], d[1]], groups: num(a, 'group') };
}
function convOnnxAttrs(a: Attrs, kernel: readonly number[]): Record<string, OnnxAttr> {
  return { kernel_shape: ints(kernel), strides: ints(nums(a, 'strides')), pads: ints(nums(a, 'pads')), dilations: ints(nums(a, 'dilations')), group: i(num(a, 'group')) };
}
/** Output spatial size of conv2d for input x and kernel (kh, kw). */
function convOut(a: Attrs, h: number, w: number, kh: number, kw: number): [number, number] {
  const [sh, sw] = nums(a, 'strides');
  const [pt, pl, pb, pr] = nums(a, 'pads');
  const [dh, dw] = nums(a, 'dilations');
  return [convOutSize(h, kh, sh, pt, pb, dh), convOutSize(w, kw, sw, pl, pr, dw)];
}
function checkConvAttrs(a: Attrs): void {
  const s = nums(a, 'strides');
  const d = nums(a, 'dilations');
  const p = nums(a, 'pads');
  if (s.length !== 2 || d.length !== 2 || p.length !== 4) throw new Error('strides and dilations need 2 values, pads 4');
  if ([...s, ...d].some((v) => !Number.isInteger(v) || v < 1)) throw new Error('strides and dilations must be positive integers');
  if (p.some((v) => !Number.isInteger(v) || v < 0)) throw new Error('pads must be non-negative integers');
}

/** Every op of the table; the table below must define exactly these. */
export type OpName =
  | 'input'
  | 'param'
  | 'constant'
  | 'fill'
  | 'add'
  | 'sub'
  | 'mul'
  | 'div'
  | 'pow'
  | 'neg'
  | 'exp'
  | 'log'
  | 'sqrt'
  | 'reciprocal'
  | 'abs'
  | 'sign'
  | 'sigmoid'
  | 'tanh'
  | 'erf'
  | 'sin'
  | 'cos'
  | 'clip'
  | 'cast'
  | 'stop_gradient'
  | 'is_finite'
  | 'less'
  | 'greater'
  | 'equal'
  | 'less_equal'
  | 'greater_equal'
  | 'where'
  | 'matmul'
  | 'reshape'
  | 'transpose'
  | 'expand'
  | 'concat'
  | 'slice'
  | 'pad'
  | 'gather'
  | 'index_add'
  | 'reduce_sum'
  | 'reduce_mean'
  | 'reduce_max'
  | 'softmax'
  | 'log_softmax'
  | 'conv2d'
  | 'conv_transpose2d'
  | 'conv2d_weight_grad'
  | 'normalize'
  | 'normalize_stat'
  | 'upsample_nearest'
  | 'attention_probs'
  | 'sdpa';

// --- the table ----------------------------------------------------------------------
const table: Record<OpName, OpDef> = {
  // sources: built by Graph.input/param/constant, never through Graph.node
  input: { infer: () => { throw new Error('use Graph.input'); }, emit: () => { throw new Error('sources are emitted by the emitter'); }, vjp: noGrad(0) },
  param: { infer: () => { throw new Error('use Graph.param'); }, emit: () => { throw new Error('sources are emitted by the emitter'); }, vjp: noGrad(0) },
  constant: { infer: () => { throw new Error('use Graph.constant'); }, emit: () => { throw new Error('sources are emitted by the emitter'); }, vjp: noGrad(0) },

  fill: {
    infer: (xs, a) => (arity(xs, 0), { shape: nums(a, 'shape'), dtype: a.dtype as DType }),
    emit: (ctx, y) => {
      const dt = y.dtype;
      const v = num(y.attrs, 'value');
      const data = dt === 'float32' ? new Float32Array([v]) : dt === 'int64' ? new BigInt64Array([BigInt(v)]) : dt === 'bool' ? new Uint8Array([v ? 1 : 0]) : new Float32Array([v]);
      if (dt !== 'float32' && dt !== 'int64' && dt !== 'bool') throw new Error(`fill: dtype ${dt} is not supported; fill float32 and cast`);
      return ctx.node('ConstantOfShape', [ctx.int64(y.shape)], { value: { tensor: { dtype: dt, shape: [1], data } } })[0];
    },
    vjp: noGrad(0),
  },

  // elementwise arithmetic
  add: { infer: broadcastFloat, emit: simple('Add'), vjp: (g) => [g, g] },
  sub: { infer: broadcastFloat, emit: simple('Sub'), vjp: (g) => [g, F.neg(g)] },
  mul: { infer: broadcastFloat, emit: simple('Mul'), vjp: (g, y) => [F.mul(g, y.inputs[1]), F.mul(g, y.inputs[0])] },
  div: { infer: broadcastFloat, emit: simple('Div'), vjp: (g, y) => [F.div(g, y.inputs[1]), F.neg(F.div(F.mul(g, y), y.inputs[1]))] },
  pow: {
    infer: broadcastFloat,
    emit: simple('Pow'),
    vjp: (g, y) => {
      const [a, b] = y.inputs;
      return [F.mul(F.mul(g, b), F.pow(a, F.sub(b, 1))), F.mul(F.mul(g, y), F.log(a))];
    },
  },
  neg: { infer: same, emit: simple('Neg'), vjp: (g) => [F.neg(g)] },
  exp: { infer: same, emit: simple('Exp'), vjp: (g, y) => [F.mul(g, y)] },
  log: { infer: same, emit: simple('Log'), vjp: (g, y) => [F.div(g, y.inputs[0])] },
  sqrt: { infer: same, emit: simple('Sqrt'), vjp: (g, y) => [F.div(g, F.mul(y, 2))] },
  reciprocal: { infer: same, emit: simple('Reciprocal'), vjp: (g, y) => [F.neg(F.mul(g, F.mul(y, y)))] },
  abs: { infer: same, emit: simple('Abs'), vjp: (g, y) => [F.mul(g, F.sign(y.inputs[0]))] },
  sign: { infer: same, emit: simple('Sign'), vjp: noGrad(1) },
  sigmoid: { infer: same, emit: simple('Sigmoid'), vjp: (g, y) => [F.mul(g, F.mul(y, F.sub(1, y)))] },
  tanh: { infer: same, emit: simple('Tanh'), vjp: (g, y) => [F.mul(g, F.sub(1, F.mul(y, y)))] },
  erf: { infer: same, emit: simple('Erf'), vjp: (g, y) => [F.mul(g, F.mul(F.exp(F.neg(F.square(y.inputs[0]))), 2 / Math.sqrt(Math.PI)))] },
  sin: { infer: same, emit: simple('Sin'), vjp: (g, y) => [F.mul(g, F.cos(y.inputs[0]))] },
  cos: { infer: same, emit: simple('Cos'), vjp: (g, y) => [F.neg(F.mul(g, F.sin(y.inputs[0])))] },
  clip: {
    infer: same,
    emit: (ctx, y, ins) => ctx.node('Clip', [ins[0], ctx.scalar(num(y.attrs, 'min'), y.dtype), ctx.scalar(num(y.attrs, 'max'), y.dtype)])[0],
    vjp: (g, y) => {
      const x = y.inputs[0];
      return [F.where(F.greaterEqual(x, num(y.attrs, 'min')), F.where(F.lessEqual(x, num(y.attrs, 'max')), g, 0), 0)];
    },
  },
  cast: {
    infer: (xs, a) => (arity(xs, 1), { shape: xs[0].shape, dtype: a.to as DType }),
    emit: (ctx, y, ins) => ctx.node('Cast', ins, { to: i(onnxDType(y.dtype)) })[0],
    vjp: (g, y) => [FLOAT_DTYPES.has(y.inputs[0].dtype) ? F.cast(g, y.inputs[0].dtype) : null],
  },
  stop_gradient: { infer: (xs) => ({ shape: xs[0].shape, dtype: xs[0].dtype }), emit: simple('Identity'), vjp: noGrad(1) },
  is_finite: {
    infer: (xs) => (requireFloat(xs), { shape: xs[0].shape, dtype: 'bool' }),
    emit: (ctx, _y, ins) => {
      const bad = ctx.node('Or', [ctx.node('IsInf', ins)[0], ctx.node('IsNaN', ins)[0]])[0];
      return ctx.node('Not', [bad])[0];
    },
    vjp: noGrad(1),
  },

  // comparisons and selection
  less: { infer: compare, emit: simple('Less'), vjp: noGrad(2) },
  greater: { infer: compare, emit: simple('Greater'), vjp: noGrad(2) },
  equal: { infer: compare, emit: simple('Equal'), vjp: noGrad(2) },
  less_equal: { infer: compare, emit: simple('LessOrEqual'), vjp: noGrad(2) },
  greater_equal: { infer: compare, emit: simple('GreaterOrEqual'), vjp: noGrad(2) },
  where: {
    infer: (xs) => {
      arity(xs, 3);
      if (xs[0].dtype !== 'bool') throw new Error(`condition must be bool, got ${xs[0].dtype}`);
      return { shape: broadcastShapes(xs[0].shape, broadcastShapes(xs[1].shape, xs[2].shape)), dtype: sameDtype(xs.slice(1)) };
    },
    emit: simple('Where'),
    vjp: (g, y) => [null, F.where(y.inputs[0], g, 0), F.where(y.inputs[0], 0, g)],
  },

  // linear algebra
  matmul: {
    infer: (xs) => {
      arity(xs, 2);
      const [a, b] = xs;
      if (a.rank < 2 || b.rank < 2) throw new Error('both operands need rank >= 2 (reshape vectors to matrices)');
      const k = a.shape[a.rank - 1];
      if (b.shape[b.rank - 2] !== k) throw new Error(`inner dimensions differ: ${k} vs ${b.shape[b.rank - 2]}`);
      const batch = broadcastShapes(a.shape.slice(0, -2), b.shape.slice(0, -2));
      requireFloat(xs);
      return { shape: [...batch, a.shape[a.rank - 2], b.shape[b.rank - 1]], dtype: sameDtype(xs) };
    },
    emit: (ctx, y, ins) => {
      // A transposed operand is read in place (FusedMatMul transA/transB): no transposed copy of a
      // weight is ever materialised, which for frozen weights would double them in memory.
      const [a, b] = y.inputs;
      const [ta, tb] = [swapsLastTwo(a), swapsLastTwo(b)];
      if (!ta && !tb) return ctx.node('MatMul', ins)[0];
      const args = [ta ? ctx.valueOf(a.inputs[0]) : ins[0], tb ? ctx.valueOf(b.inputs[0]) : ins[1]];
      return ctx.node('FusedMatMul', args, { transA: i(ta ? 1 : 0), transB: i(tb ? 1 : 0), alpha: f(1) }, 1, MS_DOMAIN)[0];
    },
    vjp: (g, y) => [F.matmul(g, F.transposeLast(y.inputs[1])), F.matmul(F.transposeLast(y.inputs[0]), g)],
  },

  // shape
  reshape: {
    infer: (xs, a) => {
      const shape = nums(a, 'shape');
      if (numel(shape) !== xs[0].size) throw new Error(`cannot reshape ${xs[0].size} elements to [${shape.join(',')}]`);
      return { shape, dtype: xs[0].dtype };
    },
    emit: (ctx, y, ins) => ctx.node('Reshape', [ins[0], ctx.int64(y.shape)])[0],
    vjp: (g, y) => [F.reshape(g, y.inputs[0].shape)],
  },
  transpose: {
    infer: (xs, a) => {
      const perm = nums(a, 'perm');
      const x = xs[0];
      if (perm.length !== x.rank || [...perm].sort((p, q) => p - q).some((p, k) => p !== k)) throw new Error(`perm [${perm}] is not a permutation of ${x.rank} axes`);
      return { shape: perm.map((p) => x.shape[p]), dtype: x.dtype };
    },
    emit: simple('Transpose', (y) => ({ perm: ints(nums(y.attrs, 'perm')) })),
    vjp: (g, y) => [F.transpose(g, inversePermutation(nums(y.attrs, 'perm')))],
  },
  expand: {
    infer: (xs, a) => {
      const shape = nums(a, 'shape');
      if (!sameShape(broadcastShapes(xs[0].shape, shape), shape)) throw new Error(`cannot broadcast to [${shape.join(',')}]`);
      return { shape, dtype: xs[0].dtype };
    },
    emit: (ctx, y, ins) => ctx.node('Expand', [ins[0], ctx.int64(y.shape)])[0],
    vjp: (g) => [g],
  },
  concat: {
    infer: (xs, a) => {
      const axis = num(a, 'axis');
      const first = xs[0];
      for (const x of xs) {
        if (x.rank !== first.rank || x.shape.some((d, k) => k !== axis && d !== first.shape[k])) throw new Error(`shapes differ outside axis ${axis}`);
      }
      return { shape: first.shape.map((d, k) => (k === axis ? xs.reduce((s, x) => s + x.shape[axis], 0) : d)), dtype: sameDtype(xs) };
    },
    emit: simple('Concat', (y) => ({ axis: i(num(y.attrs, 'axis')) })),
    vjp: (g, y) => {
      const axis = num(y.attrs, 'axis');
      let at = 0;
      return y.inputs.map((x) => F.slice(g, [axis], [at], [(at += x.shape[axis])]));
    },
  },
  slice: {
    infer: (xs, a) => {
      const shape = [...xs[0].shape];
      const [axes, starts, ends] = [nums(a, 'axes'), nums(a, 'starts'), nums(a, 'ends')];
      axes.forEach((ax, k) => (shape[ax] = Math.max(0, ends[k] - starts[k])));
      return { shape, dtype: xs[0].dtype };
    },
    emit: (ctx, y, ins) => ctx.node('Slice', [ins[0], ctx.int64(nums(y.attrs, 'starts')), ctx.int64(nums(y.attrs, 'ends')), ctx.int64(nums(y.attrs, 'axes'))])[0],
    vjp: (g, y) => {
      const x = y.inputs[0];
      const pads = new Array<number>(2 * x.rank).fill(0);
      nums(y.attrs, 'axes').forEach((ax, k) => {
        pads[ax] = nums(y.attrs, 'starts')[k];
        pads[x.rank + ax] = x.shape[ax] - nums(y.attrs, 'ends')[k];
      });
      return [F.pad(g, pads)];
    },
  },
  pad: {
    infer: (xs, a) => {
      const x = xs[0];
      const pads = nums(a, 'pads');
      if (pads.length !== 2 * x.rank || pads.some((p) => !Number.isInteger(p) || p < 0)) throw new Error(`pads must be ${2 * x.rank} non-negative integers`);
      return { shape: x.shape.map((d, k) => d + pads[k] + pads[x.rank + k]), dtype: x.dtype };
    },
    emit: (ctx, y, ins) => ctx.node('Pad', [ins[0], ctx.int64(nums(y.attrs, 'pads')), ctx.scalar(num(y.attrs, 'value'), y.dtype)], { mode: { s: 'constant' } })[0],
    vjp: (g, y) => {
      const x = y.inputs[0];
      const pads = nums(y.attrs, 'pads');
      return [F.slice(g, range(0, x.rank), pads.slice(0, x.rank), x.shape.map((d, k) => pads[k] + d))];
    },
  },
  gather: {
    infer: (xs, a) => {
      arity(xs, 2);
      const [x, idx] = xs;
      if (idx.dtype !== 'int64' && idx.dtype !== 'int32') throw new Error(`indices must be int64 or int32, got ${idx.dtype}`);
      const axis = num(a, 'axis');
      return { shape: [...x.shape.slice(0, axis), ...idx.shape, ...x.shape.slice(axis + 1)], dtype: x.dtype };
    },
    emit: simple('Gather', (y) => ({ axis: i(num(y.attrs, 'axis')) })),
    vjp: (g, y) => {
      const [x, idx] = y.inputs;
      return [F.indexAdd(F.zerosLike(x), idx, g, num(y.attrs, 'axis')), null];
    },
  },
  index_add: {
    infer: (xs, a) => {
      arity(xs, 3);
      const [base, idx, upd] = xs;
      const axis = num(a, 'axis');
      const want = [...base.shape.slice(0, axis), ...idx.shape, ...base.shape.slice(axis + 1)];
      if (!sameShape(upd.shape, want)) throw new Error(`updates must have shape [${want.join(',')}]`);
      if (idx.dtype !== 'int64') throw new Error('indices must be int64');
      return { shape: base.shape, dtype: sameDtype([base, upd]) };
    },
    emit: (ctx, y, ins) => {
      // ScatterND adds along the leading axis: move `axis` (and the index axes of updates) to the front.
      const [base, idx, upd] = y.inputs;
      const axis = num(y.attrs, 'axis');
      const m = idx.rank;
      const permBase = [axis, ...range(0, axis), ...range(axis + 1, base.rank)];
      const permUpd = [...range(axis, axis + m), ...range(0, axis), ...range(axis + m, upd.rank)];
      const b = axis === 0 ? ins[0] : ctx.node('Transpose', [ins[0]], { perm: ints(permBase) })[0];
      const u = axis === 0 ? ins[2] : ctx.node('Transpose', [ins[2]], { perm: ints(permUpd) })[0];
      const index = ctx.node('Unsqueeze', [ins[1], ctx.int64([-1])])[0];
      const out = ctx.node('ScatterND', [b, index, u], { reduction: { s: 'add' } })[0];
      return axis === 0 ? out : ctx.node('Transpose', [out], { perm: ints(inversePermutation(permBase)) })[0];
    },
    vjp: (g, y) => [g, null, F.gather(g, y.inputs[1], num(y.attrs, 'axis'))],
  },

  // reductions
  reduce_sum: {
    infer: (xs, a) => ({ shape: reduced(xs[0], nums(a, 'axes'), Boolean(a.keepdims)), dtype: xs[0].dtype }),
    emit: (ctx, y, ins) => ctx.node('ReduceSum', [ins[0], ctx.int64(nums(y.attrs, 'axes'))], { keepdims: i(y.attrs.keepdims ? 1 : 0) })[0],
    vjp: (g, y) => [unreduce(g, y.inputs[0], nums(y.attrs, 'axes'))],
  },
  reduce_mean: {
    infer: (xs, a) => (requireFloat(xs), { shape: reduced(xs[0], nums(a, 'axes'), Boolean(a.keepdims)), dtype: xs[0].dtype }),
    emit: simple('ReduceMean', (y) => ({ axes: ints(nums(y.attrs, 'axes')), keepdims: i(y.attrs.keepdims ? 1 : 0) })),
    vjp: (g, y) => {
      const x = y.inputs[0];
      const axes = nums(y.attrs, 'axes');
      return [F.div(unreduce(g, x, axes), axes.reduce((n, ax) => n * x.shape[ax], 1))];
    },
  },
  reduce_max: {
    infer: (xs, a) => (requireFloat(xs), { shape: reduced(xs[0], nums(a, 'axes'), Boolean(a.keepdims)), dtype: xs[0].dtype }),
    emit: simple('ReduceMax', (y) => ({ axes: ints(nums(y.attrs, 'axes')), keepdims: i(y.attrs.keepdims ? 1 : 0) })),
    vjp: (g, y) => {
      // Ties share the gradient equally, as PyTorch's amax does.
      const x = y.inputs[0];
      const axes = nums(y.attrs, 'axes');
      const mask = F.cast(F.equal(x, unreduce(y, x, axes)), x.dtype);
      return [F.div(F.mul(mask, unreduce(g, x, axes)), F.reduceSum(mask, axes, true))];
    },
  },
  softmax: {
    infer: same,
    emit: simple('Softmax', (y) => ({ axis: i(num(y.attrs, 'axis')) })),
    vjp: (g, y) => [F.mul(y, F.sub(g, F.reduceSum(F.mul(g, y), [num(y.attrs, 'axis')], true)))],
  },
  log_softmax: {
    infer: same,
    emit: simple('LogSoftmax', (y) => ({ axis: i(num(y.attrs, 'axis')) })),
    vjp: (g, y) => [F.sub(g, F.mul(F.exp(y), F.reduceSum(g, [num(y.attrs, 'axis')], true)))],
  },

  // convolution: the three ops are each other's adjoints, so each VJP is the other two
  conv2d: {
    infer: (xs, a) => {
      arity(xs, 2, 3);
      requireFloat(xs);
      checkConvAttrs(a);
      const [x, w, b] = xs;
      const group = num(a, 'group');
      if (x.rank !== 4 || w.rank !== 4) throw new Error('input must be [N, C, H, W] and weight [O, C/groups, kH, kW]');
      if (x.shape[1] % group || w.shape[0] % group) throw new Error(`channels (${x.shape[1]} in, ${w.shape[0]} out) do not divide into ${group} groups`);
      if (w.shape[1] * group !== x.shape[1]) throw new Error(`weight expects ${w.shape[1] * group} input channels, input has ${x.shape[1]}`);
      if (b && (b.rank !== 1 || b.shape[0] !== w.shape[0])) throw new Error(`bias must be [${w.shape[0]}]`);
      const [ho, wo] = convOut(a, x.shape[2], x.shape[3], w.shape[2], w.shape[3]);
      if (ho < 1 || wo < 1) throw new Error(`output would be ${ho}x${wo}: the kernel does not fit`);
      return { shape: [x.shape[0], w.shape[0], ho, wo], dtype: sameDtype(xs) };
    },
    emit: (ctx, y, ins) => ctx.node('Conv', ins, convOnnxAttrs(y.attrs, y.inputs[1].shape.slice(2)))[0],
    vjp: (g, y) => {
      const [x, w, b] = y.inputs;
      const o = convOpts(y.attrs);
      return [
        F.convTranspose2d(g, w, [x.shape[2], x.shape[3]], o),
        F.conv2dWeightGrad(x, g, [w.shape[2], w.shape[3]], o),
        ...(b ? [F.reduceSum(g, [0, 2, 3])] : []),
      ];
    },
  },
  conv_transpose2d: {
    infer: (xs, a) => {
      arity(xs, 2);
      requireFloat(xs);
      checkConvAttrs(a);
      const [x, w] = xs;
      const [oh, ow] = nums(a, 'out_size');
      const group = num(a, 'group');
      if (x.rank !== 4 || w.rank !== 4 || w.shape[0] !== x.shape[1]) throw new Error('input must be [N, C, H, W] and weight [C, O/groups, kH, kW]');
      const [h, wd] = convOut(a, oh, ow, w.shape[2], w.shape[3]);
      if (h !== x.shape[2] || wd !== x.shape[3]) throw new Error(`output size ${oh}x${ow} does not convolve back to ${x.shape[2]}x${x.shape[3]}`);
      return { shape: [x.shape[0], w.shape[1] * group, oh, ow], dtype: sameDtype(xs) };
    },
    emit: (ctx, y, ins) => {
      const [x, w] = y.inputs;
      const [sh, sw] = nums(y.attrs, 'strides');
      const [pt, pl, pb, pr] = nums(y.attrs, 'pads');
      const [dh, dw] = nums(y.attrs, 'dilations');
      const [oh, ow] = nums(y.attrs, 'out_size');
      const outputPadding = [oh - ((x.shape[2] - 1) * sh + (w.shape[2] - 1) * dh + 1 - pt - pb), ow - ((x.shape[3] - 1) * sw + (w.shape[3] - 1) * dw + 1 - pl - pr)];
      const [kh, kw] = w.shape.slice(2);
      const flipPads = [dh * (kh - 1) - pt, dw * (kw - 1) - pl, dh * (kh - 1) - pb + outputPadding[0], dw * (kw - 1) - pr + outputPadding[1]];
      if (sh === 1 && sw === 1 && flipPads.every((p) => p >= 0)) {
        // At stride 1 the transpose is a plain convolution with the kernel flipped and its
        // channel axes swapped (per group): about twice as fast as ConvTranspose on CPU.
        const G = num(y.attrs, 'group');
        const [cin, coutG] = w.shape;
        const flipped = ctx.node('Slice', [ins[1], ctx.int64([-1, -1]), ctx.int64([-(2 ** 62), -(2 ** 62)]), ctx.int64([2, 3]), ctx.int64([-1, -1])])[0];
        const grouped = ctx.node('Reshape', [flipped, ctx.int64([G, cin / G, coutG, kh, kw])])[0];
        const swapped = ctx.node('Reshape', [ctx.node('Transpose', [grouped], { perm: ints([0, 2, 1, 3, 4]) })[0], ctx.int64([G * coutG, cin / G, kh, kw])])[0];
        return ctx.node('Conv', [ins[0], swapped], { kernel_shape: ints([kh, kw]), strides: ints([1, 1]), pads: ints(flipPads), dilations: ints([dh, dw]), group: i(G) })[0];
      }
      return ctx.node('ConvTranspose', ins, { ...convOnnxAttrs(y.attrs, w.shape.slice(2)), output_padding: ints(outputPadding) })[0];
    },
    vjp: (g, y) => {
      const [u, w] = y.inputs;
      const o = convOpts(y.attrs);
      return [F.conv2d(g, w, undefined, o), F.conv2dWeightGrad(g, u, [w.shape[2], w.shape[3]], o)];
    },
  },
  conv2d_weight_grad: {
    infer: (xs, a) => {
      arity(xs, 2);
      requireFloat(xs);
      checkConvAttrs(a);
      const [x, gy] = xs;
      const [kh, kw] = nums(a, 'kernel');
      const group = num(a, 'group');
      const [ho, wo] = convOut(a, x.shape[2], x.shape[3], kh, kw);
      if (x.rank !== 4 || gy.rank !== 4 || gy.shape[0] !== x.shape[0] || gy.shape[2] !== ho || gy.shape[3] !== wo) {
        throw new Error(`output gradient must be [${x.shape[0]}, O, ${ho}, ${wo}]`);
      }
      return { shape: [gy.shape[1], x.shape[1] / group, kh, kw], dtype: sameDtype(xs) };
    },
    emit: (ctx, y, ins) => {
      // dW[o,c,i,j] = sum_{n,a,b} g[n,o,a,b] x[n,c,a*s+i*d,...]: a convolution of x (batch <-> channel
      // swapped) with g as the kernel, where the roles of stride and dilation trade places.
      const [x, gy] = y.inputs;
      const G = num(y.attrs, 'group');
      const [n, c, h, w] = x.shape;
      const [, o, ho, wo] = gy.shape;
      const [kh, kw] = nums(y.attrs, 'kernel');
      if (G === 1) return weightGradIm2col(ctx, y, ins);
      const xs = ctx.node('Reshape', [ctx.node('Transpose', [ctx.node('Reshape', [ins[0], ctx.int64([n, G, c / G, h, w])])[0]], { perm: ints([2, 1, 0, 3, 4]) })[0], ctx.int64([c / G, G * n, h, w])])[0];
      const gs = ctx.node('Reshape', [ctx.node('Transpose', [ctx.node('Reshape', [ins[1], ctx.int64([n, G, o / G, ho, wo])])[0]], { perm: ints([1, 2, 0, 3, 4]) })[0], ctx.int64([o, n, ho, wo])])[0];
      const attrs = { kernel_shape: ints([ho, wo]), strides: ints(nums(y.attrs, 'dilations')), dilations: ints(nums(y.attrs, 'strides')), pads: ints(nums(y.attrs, 'pads')), group: i(G) };
      let dw = ctx.node('Conv', [xs, gs], attrs)[0];
      const [fh, fw] = convOut({ ...y.attrs, strides: nums(y.attrs, 'dilations'), dilations: nums(y.attrs, 'strides') }, h, w, ho, wo);
      if (fh !== kh || fw !== kw) dw = ctx.node('Slice', [dw, ctx.int64([0, 0]), ctx.int64([kh, kw]), ctx.int64([2, 3])])[0];
      return ctx.node('Transpose', [dw], { perm: ints([1, 0, 2, 3]) })[0];
    },
    vjp: (g, y) => {
      const [x, gy] = y.inputs;
      const o = convOpts(y.attrs);
      return [F.convTranspose2d(gy, g, [x.shape[2], x.shape[3]], o), F.conv2d(x, g, undefined, o)];
    },
  },

  // normalisation: one LayerNormalization node gives y and, via CSE, the statistics the VJP reuses
  normalize: {
    infer: (xs, a) => {
      arity(xs, 1, 2, 3);
      requireFloat(xs);
      const normShape = xs[0].shape.slice(num(a, 'axis'));
      for (const p of xs.slice(1)) if (!sameShape(p.shape, normShape)) throw new Error(`scale and bias must be [${normShape.join(',')}]`);
      return { shape: xs[0].shape, dtype: sameDtype(xs) };
    },
    emit: (ctx, y, ins) => layerNormNode(ctx, y, ins)[0],
    vjp: (g, y) => {
      const [x, scale, bias] = y.inputs;
      const axis = num(y.attrs, 'axis');
      const normAxes = range(axis, x.rank);
      const mean = y.graph.node('normalize_stat', y.inputs, { ...y.attrs, which: 'mean' });
      const invStd = y.graph.node('normalize_stat', y.inputs, { ...y.attrs, which: 'inv_std' });
      const xhat = F.mul(F.sub(x, mean), invStd);
      const gs = scale ? F.mul(g, scale) : g;
      const dx = F.mul(invStd, F.sub(F.sub(gs, F.reduceMean(gs, normAxes, true)), F.mul(xhat, F.reduceMean(F.mul(gs, xhat), normAxes, true))));
      const lead = range(0, axis);
      return [dx, ...(scale ? [F.reduceSum(F.mul(g, xhat), lead)] : []), ...(bias ? [F.reduceSum(g, lead)] : [])];
    },
  },
  normalize_stat: {
    infer: (xs, a) => ({ shape: xs[0].shape.map((d, k) => (k < num(a, 'axis') ? d : 1)), dtype: 'float32' }),
    emit: (ctx, y, ins) => layerNormNode(ctx, y, ins)[y.attrs.which === 'mean' ? 1 : 2],
    vjp: (g, y) => {
      const x = y.inputs[0];
      const axis = num(y.attrs, 'axis');
      const n = numel(x.shape.slice(axis));
      const rest = y.inputs.slice(1).map(() => null);
      if (y.attrs.which === 'mean') return [F.div(F.expand(g, x.shape), n), ...rest];
      // d invStd / dx = -invStd^3 (x - mean) / n
      const mean = y.graph.node('normalize_stat', y.inputs, { ...y.attrs, which: 'mean' });
      return [F.mul(F.mul(g, F.mul(F.mul(y, y), y)), F.div(F.sub(x, mean), -n)), ...rest];
    },
  },

  // resampling
  upsample_nearest: {
    infer: (xs, a) => {
      const x = xs[0];
      const k = num(a, 'factor');
      if (x.rank < 3 || !Number.isInteger(k) || k < 1) throw new Error('needs [..., H, W] and an integer factor >= 1');
      return { shape: [...x.shape.slice(0, -2), x.shape[x.rank - 2] * k, x.shape[x.rank - 1] * k], dtype: x.dtype };
    },
    emit: (ctx, y, ins) => {
      const k = num(y.attrs, 'factor');
      const scales = new Float32Array(y.rank).fill(1);
      scales[y.rank - 2] = scales[y.rank - 1] = k;
      return ctx.node('Resize', [ins[0], '', ctx.float32(scales, [y.rank])], { mode: { s: 'nearest' }, coordinate_transformation_mode: { s: 'asymmetric' }, nearest_mode: { s: 'floor' } })[0];
    },
    vjp: (g, y) => {
      const x = y.inputs[0];
      const k = num(y.attrs, 'factor');
      const [h, w] = x.shape.slice(-2);
      const r = x.rank;
      return [F.reduceSum(F.reshape(g, [...x.shape.slice(0, -2), h, k, w, k]), [r - 1, r + 1])];
    },
  },

  // attention
  attention_probs: {
    infer: (xs) => {
      arity(xs, 2);
      requireFloat(xs);
      const [q, k] = xs;
      if (q.rank < 2 || q.rank !== k.rank || q.shape[q.rank - 1] !== k.shape[k.rank - 1] || !sameShape(q.shape.slice(0, -2), k.shape.slice(0, -2))) {
        throw new Error('q and k must be [..., L, D] with the same leading axes and D');
      }
      return { shape: [...q.shape.slice(0, -1), k.shape[k.rank - 2]], dtype: sameDtype(xs) };
    },
    emit: (ctx, y, ins) => attentionProbsNode(ctx, y.inputs[0], y.inputs[1], ins[0], ins[1], y.attrs),
    vjp: (g, y) => attentionProbsVjp(g, y, y.inputs[0], y.inputs[1], num(y.attrs, 'scale')),
  },
  sdpa: {
    infer: (xs) => {
      arity(xs, 3);
      requireFloat(xs);
      const [q, k, v] = xs;
      if (q.rank < 2 || q.rank !== k.rank || k.rank !== v.rank || q.shape[q.rank - 1] !== k.shape[k.rank - 1] || k.shape[k.rank - 2] !== v.shape[v.rank - 2]) {
        throw new Error('q, k, v must be [..., Lq, D], [..., Lk, D], [..., Lk, Dv]');
      }
      if (!sameShape(q.shape.slice(0, -2), k.shape.slice(0, -2)) || !sameShape(k.shape.slice(0, -2), v.shape.slice(0, -2))) throw new Error('leading axes of q, k, v differ');
      return { shape: [...q.shape.slice(0, -1), v.shape[v.rank - 1]], dtype: sameDtype(xs) };
    },
    emit: (ctx, y, ins) => ctx.node('MatMul', [attentionProbsNode(ctx, y.inputs[0], y.inputs[1], ins[0], ins[1], { ...y.attrs, recompute: false }), ins[2]])[0],
    vjp: (g, y) => {
      const [q, k, v] = y.inputs;
      const scale = num(y.attrs, 'scale');
      const p = F.attentionProbs(q, k, { scale, causal: Boolean(y.attrs.causal), recompute: Boolean(y.attrs.recompute) });
      const [dq, dk] = attentionProbsVjp(F.matmul(g, F.transposeLast(v)), p, q, k, scale);
      return [dq, dk, F.matmul(F.transposeLast(p), g)];
    },
  },
};

export const OPS: Readonly<Record<OpName, OpDef>> = table;
