import onnxProto from 'onnx-proto';
import { describe, expect, it } from 'vitest';
import { grad } from '../core/graph/autodiff.ts';
import * as F from '../core/graph/functional.ts';
import { Graph, type Tensor } from '../core/graph/graph.ts';
import { emitOnnx } from '../core/graph/onnx.ts';

const { onnx } = onnxProto;

function opCounts(outputs: Record<string, Tensor>): Map<string, number> {
  const model = onnx.ModelProto.decode(emitOnnx(outputs).bytes);
  const counts = new Map<string, number>();
  for (const n of model.graph!.node!) counts.set(n.opType!, (counts.get(n.opType!) ?? 0) + 1);
  return counts;
}

describe('emitted graph structure', () => {
  it('a linear layer reads its weight transposed in place, forward and backward (no transposed copy)', () => {
    const g = new Graph();
    const x = g.input('x', [2, 5, 8]);
    const w = g.param('w', [16, 8], 'float32', { kind: 'inline', data: new Float32Array(128) });
    const loss = F.sumAll(F.linear(x, w));
    const [dx] = grad(loss, [x]);
    const ops = opCounts({ loss, dx });
    expect(ops.get('Transpose') ?? 0).toBe(0);
    expect(ops.get('FusedMatMul')).toBe(1);
    expect(ops.get('MatMul')).toBe(1); // dx = g @ W: the double transpose cancelled in the IR
  });

  it('transposes compose in the IR', () => {
    const g = new Graph();
    const x = g.input('x', [2, 3, 4]);
    expect(F.transpose(F.transpose(x, [2, 0, 1]), [1, 2, 0])).toBe(x);
    const t = F.transpose(F.transpose(x, [1, 0, 2]), [0, 2, 1]);
    expect(t.inputs[0]).toBe(x);
    expect(t.attrs.perm).toEqual([1, 2, 0]);
  });

  it('large attention recomputes its probabilities in backward; small attention keeps them', () => {
    const count = (recompute: boolean | undefined, l: number) => {
      const g = new Graph();
      const [q, k, v] = ['q', 'k', 'v'].map((n) => g.input(n, [1, 2, l, 8]));
      const loss = F.sumAll(F.sdpa(q, k, v, recompute === undefined ? {} : { recompute }));
      return opCounts({ loss, ...Object.fromEntries(grad(loss, [q, k, v]).map((d, j) => [`d${j}`, d])) }).get('Softmax');
    };
    expect(count(false, 16)).toBe(1);
    expect(count(true, 16)).toBe(2);
    expect(count(undefined, 16)).toBe(1); // 2 KB of probabilities: kept
    expect(count(undefined, 1500)).toBe(2); // 1500^2 * 2 heads * 4 B = 18 MB: recomputed
  });
});
