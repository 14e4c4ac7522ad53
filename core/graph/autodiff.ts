/**
 * Reverse-mode autodiff: appends the backward pass to the graph. The shared
 * work lives here once — which nodes need a gradient, summing fan-out,
 * un-broadcasting, arity checks — so the rules in ops.ts stay one line.
 */
import { GraphBuildError } from '../errors.ts';
import * as F from './functional.ts';
import { FLOAT_DTYPES, type Tensor } from './graph.ts';
import { OPS } from './ops.ts';
import { broadcastAxes, sameShape } from './shape.ts';

/**
 * Gradients of `loss` with respect to each of `wrt` (inputs, params or any
 * intermediate tensor). Only nodes on a path from some `wrt` to `loss` get a
 * gradient. A `wrt` that `loss` does not depend on gets zeros.
 * `seed` is dL/dloss; it defaults to ones (so a scalar loss needs none).
 */
export function grad(loss: Tensor, wrt: readonly Tensor[], seed?: Tensor): Tensor[] {
  const g = loss.graph;
  if (!FLOAT_DTYPES.has(loss.dtype)) throw new GraphBuildError(`grad: the loss is ${loss.dtype}; it must be floating point`);
  if (seed && !sameShape(seed.shape, loss.shape)) throw new GraphBuildError(`grad: seed [${seed.shape}] does not match loss [${loss.shape}]`);
  const targets = new Set(wrt.map((t) => t.id));

  // Forward sweep (build order is topological): which nodes depend on a wrt?
  const nodes = g.reachable([loss]);
  const dependsOnWrt = new Set<number>();
  for (const t of nodes) {
    if (targets.has(t.id) || t.inputs.some((x) => dependsOnWrt.has(x.id))) dependsOnWrt.add(t.id);
  }

  const grads = new Map<number, Tensor>();
  const accumulate = (t: Tensor, d: Tensor): void => {
    const have = grads.get(t.id);
    grads.set(t.id, have ? F.add(have, d) : d);
  };
  if (dependsOnWrt.has(loss.id)) accumulate(loss, seed ?? F.onesLike(loss));

  // Backward sweep over the nodes between wrt and loss.
  for (let k = nodes.length - 1; k >= 0; k--) {
    const y = nodes[k];
    const dy = grads.get(y.id);
    if (!dy || y.inputs.length === 0 || !y.inputs.some((x) => dependsOnWrt.has(x.id))) continue;
    const rule = OPS[y.op].vjp;
    if (!rule) throw new GraphBuildError(`grad: op '${y.op}' has no gradient rule (needed for ${y})`);
    const dxs = rule(dy, y);
    if (dxs.length !== y.inputs.length) {
      throw new GraphBuildError(`grad: the rule of '${y.op}' returned ${dxs.length} gradients for ${y.inputs.length} inputs`);
    }
    y.inputs.forEach((x, j) => {
      const dx = dxs[j];
      if (dx && dependsOnWrt.has(x.id)) accumulate(x, sumToShape(dx, x));
    });
  }

  return wrt.map((t) => grads.get(t.id) ?? F.zerosLike(t));
}

/** Sums a gradient over the axes its input was broadcast along. */
function sumToShape(d: Tensor, x: Tensor): Tensor {
  if (sameShape(d.shape, x.shape)) return d;
  const axes = broadcastAxes(x.shape, d.shape);
  const summed = F.reduceSum(d, axes, true);
  if (summed.size !== x.size) throw new GraphBuildError(`grad: gradient [${d.shape}] does not reduce to input shape [${x.shape}]`);
  return F.reshape(summed, x.shape);
}
