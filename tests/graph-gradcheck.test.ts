import { afterAll, describe, expect, it } from 'vitest';
import { grad } from '../core/graph/autodiff.ts';
import * as F from '../core/graph/functional.ts';
import { Graph, type Tensor } from '../core/graph/graph.ts';
import { emitOnnx } from '../core/graph/onnx.ts';
import { Session } from '../core/runtime/session.ts';
import { OPS, type OpName } from '../core/graph/ops.ts';
import { gradCheck, rng, type InputSpec } from './helpers/gradcheck.ts';

const covered = new Set<string>();
let ran = 0;
const pick = rng(20261122);
/** A random integer in [lo, hi]: every run checks the same "random" shapes. */
const dim = (lo: number, hi: number): number => lo + Math.floor(pick() * (hi - lo + 1));
const pos: [number, number] = [0.5, 2];
const idx = (values: number[]): InputSpec => ({ shape: [values.length], fixed: { dtype: 'int64', data: BigInt64Array.from(values, BigInt) } });

/** tolerance: relative; only the fp16 round trip needs more than the default (fp16 steps are ~5e-4). */
type Case = [name: string, build: (...xs: Tensor[]) => Tensor, specs: InputSpec[], tolerance?: number];

const [b, m, n, k] = [dim(1, 3), dim(2, 5), dim(2, 6), dim(2, 5)];
const cases: Case[] = [
  // elementwise, with broadcasting both ways
  ['add broadcast', (x, y) => F.add(x, y), [{ shape: [b, m, n] }, { shape: [m, 1] }]],
  ['sub broadcast', (x, y) => F.sub(x, y), [{ shape: [1, n] }, { shape: [b, m, n] }]],
  ['mul broadcast', (x, y) => F.mul(x, y), [{ shape: [b, 1, n] }, { shape: [m, 1] }]],
  ['div broadcast', (x, y) => F.div(x, y), [{ shape: [b, m, n] }, { shape: [n], range: pos }]],
  ['div scalar', (x) => F.div(2, x), [{ shape: [m, n], range: pos }]],
  ['pow tensor exponent', (x, y) => F.pow(x, y), [{ shape: [m, n], range: pos }, { shape: [m, n] }]],
  ['pow constant exponent', (x) => F.pow(x, 3), [{ shape: [m, n] }]],
  ['neg', (x) => F.neg(x), [{ shape: [m, n] }]],
  ['exp', (x) => F.exp(x), [{ shape: [m, n] }]],
  ['log', (x) => F.log(x), [{ shape: [m, n], range: pos }]],
  ['sqrt', (x) => F.sqrt(x), [{ shape: [m, n], range: pos }]],
  ['rsqrt', (x) => F.rsqrt(x), [{ shape: [m, n], range: pos }]],
  ['abs', (x) => F.abs(x), [{ shape: [m, n] }]],
  ['sigmoid', (x) => F.sigmoid(x), [{ shape: [m, n] }]],
  ['tanh', (x) => F.tanh(x), [{ shape: [m, n] }]],
  ['sin', (x) => F.sin(x), [{ shape: [m, n] }]],
  ['cos', (x) => F.cos(x), [{ shape: [m, n] }]],
  ['silu', (x) => F.silu(x), [{ shape: [m, n] }]],
  ['gelu (erf)', (x) => F.gelu(x), [{ shape: [m, n] }]],
  ['quick_gelu', (x) => F.quickGelu(x), [{ shape: [m, n] }]],
  ['relu', (x) => F.relu(x), [{ shape: [m, n] }]],
  ['clip', (x) => F.clip(x, -0.5, 0.5), [{ shape: [m, n] }]],
  ['where with comparison', (x, y) => F.where(F.less(x, y), F.mul(x, 3), y), [{ shape: [m, n] }, { shape: [n] }]],
  ['comparisons carry no gradient', (x) => F.where(F.greaterEqual(x, 0), F.where(F.lessEqual(x, 0.5), x, F.where(F.equal(x, x), F.exp(x), x)), F.neg(x)), [{ shape: [m, n] }]],
  ['is_finite mask', (x) => F.where(F.isFinite(F.log(x)), x, 0), [{ shape: [m, n] }]],
  ['cast round trip through float16', (x) => F.mul(F.cast(F.cast(x, 'float16'), 'float32'), 1), [{ shape: [m, n] }], 0.2],
  // linear algebra
  ['matmul batched + broadcast', (x, y) => F.matmul(x, y), [{ shape: [b, 1, m, k] }, { shape: [3, k, n] }]],
  ['linear', (x, w, bias) => F.linear(x, w, bias), [{ shape: [b, m, k] }, { shape: [n, k] }, { shape: [n] }]],
  // shape
  ['reshape', (x) => F.reshape(x, [m * n, -1]), [{ shape: [m, n, 2] }]],
  ['transpose', (x) => F.transpose(x, [2, 0, 1]), [{ shape: [b, m, n] }]],
  ['expand', (x) => F.expand(x, [b, m, n]), [{ shape: [m, 1] }]],
  ['concat', (x, y) => F.concat([x, y, x], 1), [{ shape: [b, m, n] }, { shape: [b, 2, n] }]],
  ['slice', (x) => F.slice(x, [1, 2], [1, 0], [m, n - 1]), [{ shape: [b, m, n] }]],
  ['split', (x) => { const [p, q] = F.split(x, -1, [1, n - 1]); return F.mul(F.reduceSum(p, [1], true), q); }, [{ shape: [m, n] }]],
  ['pad', (x) => F.pad(x, [0, 1, 2, 1, 0, 3], 0.5), [{ shape: [2, m, n] }]],
  ['gather (embedding rows, repeated ids)', (x, ids) => F.gather(x, ids, 0), [{ shape: [7, k] }, idx([3, 1, 3, 6, 0])]],
  ['gather along axis 1', (x, ids) => F.gather(x, ids, 1), [{ shape: [b, 5, k] }, idx([4, 0, 4])]],
  ['index_add', (x, ids, u) => F.indexAdd(x, ids, u, 1), [{ shape: [b, 6, k] }, idx([5, 2, 5]), { shape: [b, 3, k] }]],
  // reductions
  ['reduce_sum', (x) => F.reduceSum(x, [0, 2]), [{ shape: [b, m, n] }]],
  ['reduce_sum keepdims', (x) => F.reduceSum(x, [1], true), [{ shape: [b, m, n] }]],
  ['reduce_mean', (x) => F.reduceMean(x, [-1], true), [{ shape: [b, m, n] }]],
  ['reduce_max', (x) => F.reduceMax(x, [1]), [{ shape: [b, m, n] }]],
  ['softmax', (x) => F.softmax(x, 1), [{ shape: [b, m, n] }]],
  ['log_softmax', (x) => F.logSoftmax(x, -1), [{ shape: [b, m, n] }]],
  // normalisation
  ['layer_norm', (x, w, bias) => F.layerNorm(x, w, bias), [{ shape: [b, m, n] }, { shape: [n] }, { shape: [n] }]],
  ['group_norm', (x, w, bias) => F.groupNorm(x, 2, w, bias, 1e-6), [{ shape: [2, 4, 3, 3] }, { shape: [4] }, { shape: [4] }]],
  ['normalize statistics', (x) => F.add(F.mul(x.graph.node('normalize_stat', [x], { axis: 1, eps: 1e-5, which: 'inv_std' }), 1), x.graph.node('normalize_stat', [x], { axis: 1, eps: 1e-5, which: 'mean' })), [{ shape: [3, n] }]],
  // convolution: paddings symmetric and asymmetric, strides 1 and 2, dilation, groups
  ['conv2d 3x3 pad 1 + bias', (x, w, bias) => F.conv2d(x, w, bias, { padding: 1 }), [{ shape: [2, 3, 5, 6] }, { shape: [4, 3, 3, 3] }, { shape: [4] }]],
  ['conv2d stride 2 pad (0,1,0,1)', (x, w) => F.conv2d(x, w, undefined, { stride: 2, padding: [0, 0, 1, 1] }), [{ shape: [1, 2, 7, 6] }, { shape: [3, 2, 3, 3] }]],
  ['conv2d stride 2 pad 1', (x, w) => F.conv2d(x, w, undefined, { stride: 2, padding: 1 }), [{ shape: [2, 2, 6, 5] }, { shape: [2, 2, 3, 3] }]],
  ['conv2d dilation 2', (x, w) => F.conv2d(x, w, undefined, { dilation: 2, padding: [1, 2] }), [{ shape: [1, 2, 7, 7] }, { shape: [2, 2, 3, 3] }]],
  ['conv2d groups 2', (x, w, bias) => F.conv2d(x, w, bias, { groups: 2, padding: 1 }), [{ shape: [2, 4, 5, 5] }, { shape: [6, 2, 3, 3] }, { shape: [6] }]],
  ['conv2d depthwise stride 2', (x, w) => F.conv2d(x, w, undefined, { groups: 3, stride: 2, padding: 1 }), [{ shape: [1, 3, 6, 6] }, { shape: [3, 1, 3, 3] }]],
  ['conv2d 1x1', (x, w) => F.conv2d(x, w), [{ shape: [2, 3, 4, 4] }, { shape: [5, 3, 1, 1] }]],
  ['conv_transpose2d stride 2', (x, w) => F.convTranspose2d(x, w, [7, 6], { stride: 2, padding: [0, 0, 1, 1] }), [{ shape: [1, 3, 3, 3] }, { shape: [3, 2, 3, 3] }]],
  ['conv2d_weight_grad groups 2 stride 2', (x, gy) => F.conv2dWeightGrad(x, gy, [3, 3], { stride: 2, padding: 1, groups: 2 }), [{ shape: [2, 4, 6, 5] }, { shape: [2, 6, 3, 3] }]],
  // resampling
  ['upsample nearest 2x', (x) => F.upsampleNearest(x, 2), [{ shape: [2, 3, 3, 4] }]],
  ['resize nearest 2 -> 3 (gather path)', (x) => F.resizeNearest(x, 3, 5), [{ shape: [1, 2, 2, 3] }]],
  // attention
  ['sdpa', (q, kk, v) => F.sdpa(q, kk, v), [{ shape: [b, 2, m, 4] }, { shape: [b, 2, n, 4] }, { shape: [b, 2, n, 3] }]],
  ['sdpa causal', (q, kk, v) => F.sdpa(q, kk, v, { causal: true }), [{ shape: [2, m, 4] }, { shape: [2, m, 4] }, { shape: [2, m, 4] }]],
  ['attention_probs', (q, kk) => F.attentionProbs(q, kk, { scale: 0.7 }), [{ shape: [2, m, 4] }, { shape: [2, n, 4] }]],
  ['sdpa recomputing its probabilities in backward', (q, kk, v) => F.sdpa(q, kk, v, { causal: true, recompute: true }), [{ shape: [2, m, 4] }, { shape: [2, m, 4] }, { shape: [2, m, 4] }]],
  // fan-out: one input used along several paths
  ['fan-out', (x) => F.mul(F.exp(x), F.add(F.sigmoid(x), F.mul(x, x))), [{ shape: [m, n] }]],
];

describe('VJP of every op against central finite differences', () => {
  for (const [name, build, specs, tolerance] of cases) {
    it(name, async () => {
      const result = await gradCheck(build, specs, name.length * 7919, tolerance);
      result.ops.forEach((op) => covered.add(op));
      ran++;
    });
  }

  it('stop_gradient: zero gradient through it, exact gradient around it', async () => {
    const g = new Graph();
    const x = g.input('x', [m, n]);
    const y = g.input('y', [m, n]);
    const loss = F.sumAll(F.mul(F.stopGradient(F.mul(x, x)), y));
    const [gx, gy] = grad(loss, [x, y]);
    const session = await Session.create(emitOnnx({ gx, gy }), { provider: 'cpu' });
    const xv = Float32Array.from({ length: m * n }, (_, e) => e / 3 - 1);
    const out = await session.run({ x: xv, y: new Float32Array(m * n).fill(2) });
    expect(Array.from(out.gx.data as Float32Array)).toEqual(new Array(m * n).fill(0));
    expect(Array.from(out.gy.data as Float32Array)).toEqual(Array.from(xv, (v) => Math.fround(v * v)));
    g.reachable([gx, gy, loss]).forEach((t) => covered.add(t.op));
    ran++;
  });

  afterAll(() => {
    // A new op with a gradient rule must get a case here.
    const needs = (Object.keys(OPS) as OpName[]).filter((op) => !['input', 'param', 'constant'].includes(op));
    const missing = needs.filter((op) => !covered.has(op));
    if (ran === cases.length + 1) expect(missing, 'ops without a gradient check').toEqual([]);
  });
});
