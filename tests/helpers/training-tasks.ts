/** Small synthetic learning problems for the trainer tests. */
import * as F from '../../core/graph/functional.ts';
import { Graph } from '../../core/graph/graph.ts';
import { Trainer } from '../../core/runtime/trainer.ts';
import { rng } from './gradcheck.ts';

const he = (rand: () => number, fanIn: number, n: number): Float32Array => Float32Array.from({ length: n }, () => (rand() * 2 - 1) * Math.sqrt(6 / fanIn));

/** MLP regression of y = sin(3 x0) + x1^2 - x0 x1 on [-1, 1]^2. */
export async function buildRegressionTrainer(seed: number, hidden = 64, batchSize = 128) {
  const rand = rng(seed);
  const g = new Graph();
  const x = g.input('x', [batchSize, 2]);
  const y = g.input('y', [batchSize, 1]);
  const w1 = g.input('fc1.weight', [hidden, 2]);
  const b1 = g.input('fc1.bias', [hidden]);
  const w2 = g.input('fc2.weight', [hidden, hidden]);
  const b2 = g.input('fc2.bias', [hidden]);
  const w3 = g.input('fc3.weight', [1, hidden]);
  const b3 = g.input('fc3.bias', [1]);
  const h = F.silu(F.linear(F.silu(F.linear(x, w1, b1)), w2, b2));
  const loss = F.mse(F.linear(h, w3, b3), y);
  const trainer = await Trainer.create({
    loss,
    params: {
      'fc1.weight': { tensor: w1, init: he(rand, 2, hidden * 2) },
      'fc1.bias': { tensor: b1, init: new Float32Array(hidden) },
      'fc2.weight': { tensor: w2, init: he(rand, hidden, hidden * hidden) },
      'fc2.bias': { tensor: b2, init: new Float32Array(hidden) },
      'fc3.weight': { tensor: w3, init: he(rand, hidden, hidden) },
      'fc3.bias': { tensor: b3, init: new Float32Array(1) },
    },
    optimizer: { kind: 'adamw', lr: 3e-3, weightDecay: 1e-4, maxGradNorm: 1 },
    session: { provider: 'cpu', threads: 1 },
  });
  const data = rng(seed + 1);
  const batch = () => {
    const xs = Float32Array.from({ length: batchSize * 2 }, () => data() * 2 - 1);
    const ys = Float32Array.from({ length: batchSize }, (_, i) => Math.sin(3 * xs[2 * i]) + xs[2 * i + 1] ** 2 - xs[2 * i] * xs[2 * i + 1]);
    return { x: xs, y: ys };
  };
  return { trainer, batch };
}

/**
 * A conv net (conv3x3 / GroupNorm / SiLU / stride-2 conv / mean pool / linear)
 * telling whether a bright 3x3 square sits in the left or the right half of a
 * noisy 8x8 image; cross-entropy via log_softmax.
 */
export async function buildConvClassifier(seed: number, batchSize = 32) {
  const rand = rng(seed);
  const g = new Graph();
  const img = g.input('image', [batchSize, 1, 8, 8]);
  const onehot = g.input('onehot', [batchSize, 2]);
  const shapes: Record<string, number[]> = {
    'conv1.weight': [8, 1, 3, 3], 'conv1.bias': [8], 'norm.weight': [8], 'norm.bias': [8],
    'conv2.weight': [16, 8, 3, 3], 'conv2.bias': [16], 'head.weight': [2, 16], 'head.bias': [2],
  };
  const p = Object.fromEntries(Object.entries(shapes).map(([n, s]) => [n, g.input(n, s)]));
  let h = F.conv2d(img, p['conv1.weight'], p['conv1.bias'], { padding: 1 });
  h = F.silu(F.groupNorm(h, 2, p['norm.weight'], p['norm.bias']));
  h = F.silu(F.conv2d(h, p['conv2.weight'], p['conv2.bias'], { stride: 2, padding: [0, 0, 1, 1] }));
  const logits = F.linear(F.reduceMean(h, [2, 3]), p['head.weight'], p['head.bias']);
  const logp = F.logSoftmax(logits, -1);
  const loss = F.neg(F.meanAll(F.reduceSum(F.mul(logp, onehot), [1])));
  const accuracy = F.meanAll(F.cast(F.equal(F.reduceMax(logp, [1], true), F.reduceSum(F.mul(logp, onehot), [1], true)), 'float32'));
  const init = (n: string): Float32Array => {
    const s = shapes[n];
    if (n.endsWith('bias')) return new Float32Array(s[0]);
    if (n === 'norm.weight') return new Float32Array(8).fill(1);
    return he(rand, s.slice(1).reduce((a, b) => a * b, 1), s.reduce((a, b) => a * b, 1));
  };
  const trainer = await Trainer.create({
    loss,
    params: Object.fromEntries(Object.keys(shapes).map((n) => [n, { tensor: p[n], init: init(n) }])),
    optimizer: { kind: 'adamw', lr: 1e-2, weightDecay: 0 },
    outputs: { accuracy },
    session: { provider: 'cpu', threads: 1 },
  });
  const data = rng(seed + 7);
  const batch = () => {
    const image = Float32Array.from({ length: batchSize * 64 }, () => (data() - 0.5) * 0.6);
    const labels = new Float32Array(batchSize * 2);
    for (let b = 0; b < batchSize; b++) {
      const right = data() < 0.5 ? 1 : 0;
      const col = right ? 4 + Math.floor(data() * 2) : Math.floor(data() * 2);
      const row = Math.floor(data() * 6);
      for (let r = row; r < row + 3; r++) for (let c = col; c < col + 3; c++) image[b * 64 + r * 8 + c] += 1;
      labels[b * 2 + right] = 1;
    }
    return { image, onehot: labels };
  };
  return { trainer, batch };
}
