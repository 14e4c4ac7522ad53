/**
 * Finite-difference checking of the autodiff: builds loss = sum(f(x...) * w)
 * for a random w, emits the loss and its gradients, and compares analytic
 * directional derivatives (and single coordinates) with central differences.
 */
import { expect } from 'vitest';
import { grad } from '../../core/graph/autodiff.ts';
import * as F from '../../core/graph/functional.ts';
import { Graph, type Tensor } from '../../core/graph/graph.ts';
import { emitOnnx } from '../../core/graph/onnx.ts';
import { Session } from '../../core/runtime/session.ts';

/** Small deterministic PRNG for test data (mulberry32). */
export function rng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface InputSpec {
  shape: number[];
  /** Value range; default [-1, 1]. */
  range?: [number, number];
  /** Values fed as given, not differentiated (e.g. indices). */
  fixed?: { dtype: 'int64' | 'float32'; data: BigInt64Array | Float32Array };
}

export interface GradCheckResult {
  ops: Set<string>;
  maxRelError: number;
}

const EPS = 1e-2;

/** Central difference with Richardson extrapolation: truncation error O(h^4). */
async function richardson(f: (h: number) => Promise<number>): Promise<number> {
  const central = async (h: number) => ((await f(h)) - (await f(-h))) / (2 * h);
  const [d1, d2] = [await central(EPS), await central(EPS / 2)];
  return (4 * d2 - d1) / 3;
}

export async function gradCheck(
  build: (...xs: Tensor[]) => Tensor,
  specs: InputSpec[],
  seed = 1,
  tolerance = 1e-2,
): Promise<GradCheckResult> {
  const rand = rng(seed);
  const g = new Graph();
  const xs = specs.map((s, k) => g.input(`x${k}`, s.shape, s.fixed?.dtype ?? 'float32'));
  const y = build(...xs);
  const w = g.constant(Float32Array.from({ length: y.size }, () => rand() * 2 - 1), y.shape);
  const loss = F.sumAll(F.mul(F.cast(y, 'float32'), w));
  const diff = xs.filter((_, k) => !specs[k].fixed);
  const grads = grad(loss, diff);
  const outputs: Record<string, Tensor> = { loss };
  grads.forEach((d, k) => (outputs[`grad${k}`] = d));
  const session = await Session.create(emitOnnx(outputs), { provider: 'cpu', threads: 1 });

  const values = specs.map((s) => {
    if (s.fixed) return s.fixed.data;
    const [lo, hi] = s.range ?? [-1, 1];
    return Float32Array.from({ length: s.shape.reduce((a, b) => a * b, 1) }, () => lo + (hi - lo) * rand());
  });
  const feeds = (vals: (Float32Array | BigInt64Array)[]) => Object.fromEntries(vals.map((v, k) => [`x${k}`, v]));
  const lossAt = async (vals: (Float32Array | BigInt64Array)[]) => (await session.run(feeds(vals), ['loss'])).loss.data[0] as number;

  const base = await session.run(feeds(values));
  const analytic = grads.map((_, k) => base[`grad${k}`].data as Float32Array);
  const diffIdx = specs.map((s, k) => (s.fixed ? -1 : k)).filter((k) => k >= 0);

  let maxRel = 0;
  const compare = (fd: number, an: number, what: string) => {
    const err = Math.abs(fd - an);
    const scale = Math.abs(fd) + Math.abs(an) + 1e-2;
    maxRel = Math.max(maxRel, err / scale);
    expect(err, `${what}: finite difference ${fd}, analytic ${an}`).toBeLessThanOrEqual(tolerance * scale);
  };

  // Directional derivatives along random directions.
  for (let trial = 0; trial < 2; trial++) {
    const dirs = diffIdx.map((k) => Float32Array.from({ length: (values[k] as Float32Array).length }, () => rand() * 2 - 1));
    const shifted = (step: number) =>
      values.map((v, k) => {
        const j = diffIdx.indexOf(k);
        return j < 0 ? v : Float32Array.from(v as Float32Array, (x, e) => x + step * dirs[j][e]);
      });
    const fd = await richardson((h) => lossAt(shifted(h)));
    let an = 0;
    diffIdx.forEach((_, j) => analytic[j].forEach((d, e) => (an += d * dirs[j][e])));
    compare(fd, an, `directional derivative ${trial}`);
  }
  // A few single coordinates of each input.
  for (const [j, k] of diffIdx.entries()) {
    const v = values[k] as Float32Array;
    for (let c = 0; c < Math.min(3, v.length); c++) {
      const e = Math.floor(rand() * v.length);
      const at = (step: number) => values.map((u, m) => (m === k ? Float32Array.from(v, (x, q) => (q === e ? x + step : x)) : u));
      const fd = await richardson((h) => lossAt(at(h)));
      compare(fd, analytic[j][e], `d loss / d x${k}[${e}]`);
    }
  }
  await session.release();
  return { ops: new Set(g.reachable([loss, ...grads]).map((t) => t.op)), maxRelError: maxRel };
}
