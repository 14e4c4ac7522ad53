import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { describe, expect, it } from 'vitest';
import { GraphBuildError, NonFiniteError } from '../core/errors.ts';
import * as F from '../core/graph/functional.ts';
import { Graph } from '../core/graph/graph.ts';
import { emitOnnx } from '../core/graph/onnx.ts';
import { openSafetensors } from '../core/io/safetensors.ts';
import type { OptimizerConfig } from '../core/runtime/optim.ts';
import { Session } from '../core/runtime/session.ts';
import { Trainer } from '../core/runtime/trainer.ts';
import { FIXTURES_DIR, hasShared } from './helpers/shared.ts';
import { buildConvClassifier, buildRegressionTrainer } from './helpers/training-tasks.ts';

async function quadraticTrainer(init: number[], optimizer: OptimizerConfig) {
  const g = new Graph();
  const p = g.input('p', [init.length]);
  const loss = F.mul(F.sumAll(F.square(p)), 0.5); // dL/dp = p
  return Trainer.create({ loss, params: { p: { tensor: p, init: Float32Array.from(init) } }, optimizer, session: { provider: 'cpu', threads: 1 } });
}

describe('optimizers against closed forms', () => {
  it('AdamW first step: p(1 - lr wd) - lr sign(p) (m_hat / sqrt(v_hat) = g / |g|)', async () => {
    const t = await quadraticTrainer([1, -2, 0.5], { kind: 'adamw', lr: 0.1, weightDecay: 0.1, eps: 0 });
    const r = await t.run({});
    expect(r.loss).toBeCloseTo(0.5 * (1 + 4 + 0.25), 6);
    expect(r.gradNorm).toBeCloseTo(Math.sqrt(1 + 4 + 0.25), 6);
    const want = [1, -2, 0.5].map((p) => p * (1 - 0.1 * 0.1) - 0.1 * Math.sign(p));
    Array.from(t.parameter('p')).forEach((v, k) => expect(v).toBeCloseTo(want[k], 6));
  });

  it('AdamW second step uses bias-corrected moments', async () => {
    const [b1, b2, lr] = [0.9, 0.999, 0.05];
    const t = await quadraticTrainer([2], { kind: 'adamw', lr, weightDecay: 0, betas: [b1, b2], eps: 1e-8 });
    await t.run({});
    await t.run({});
    // By hand: p1 = 2 - lr; g2 = p1; m = (1-b1)(b1*2 + p1); v = (1-b2)(b2*4 + p1^2)
    const p1 = 2 - lr;
    const m = (1 - b1) * (b1 * 2 + p1);
    const v = (1 - b2) * (b2 * 4 + p1 * p1);
    const p2 = p1 - (lr * (m / (1 - b1 ** 2))) / (Math.sqrt(v / (1 - b2 ** 2)) + 1e-8);
    expect(t.parameter('p')[0]).toBeCloseTo(p2, 5);
  });

  it('SGD with momentum and weight decay, as PyTorch defines them', async () => {
    const t = await quadraticTrainer([1, 3], { kind: 'sgd', lr: 0.1, momentum: 0.9, weightDecay: 0.5 });
    await t.run({});
    await t.run({});
    // d = g + wd p = 1.5 p; buf1 = d1; p1 = p - lr d1; buf2 = 0.9 buf1 + 1.5 p1; p2 = p1 - lr buf2
    const want = [1, 3].map((p) => {
      const buf1 = 1.5 * p;
      const p1 = p - 0.1 * buf1;
      return p1 - 0.1 * (0.9 * buf1 + 1.5 * p1);
    });
    Array.from(t.parameter('p')).forEach((v, k) => expect(v).toBeCloseTo(want[k], 5));
  });

  it('clips the global gradient norm', async () => {
    const t = await quadraticTrainer([3, 4], { kind: 'sgd', lr: 1, maxGradNorm: 1 });
    const r = await t.run({});
    expect(r.gradNorm).toBeCloseTo(5, 5); // reported before clipping
    expect(Array.from(t.parameter('p')).map((v) => Number(v.toFixed(5)))).toEqual([3 - 0.6, 4 - 0.8]);
  });
});

describe('training converges', () => {
  it('an MLP regresses sin(3a) + b^2 - ab below MSE 0.01 within 600 steps', async () => {
    const { trainer, batch } = await buildRegressionTrainer(3);
    const first = (await trainer.run(batch())).loss;
    let recent: number[] = [];
    for (let s = 0; s < 600; s++) recent = [...recent.slice(-19), (await trainer.run(batch())).loss];
    const final = recent.reduce((a, b) => a + b, 0) / recent.length;
    expect(first).toBeGreaterThan(0.1);
    expect(final).toBeLessThan(0.01);
  });

  it('a conv net (GroupNorm, SiLU, stride-2 conv) classifies square position: loss < 0.1, accuracy >= 95%', async () => {
    const { trainer, batch } = await buildConvClassifier(5);
    let last = { loss: Infinity, accuracy: 0 };
    const window: { loss: number; accuracy: number }[] = [];
    for (let s = 0; s < 300; s++) {
      const r = await trainer.run(batch());
      window.push({ loss: r.loss, accuracy: r.outputs.accuracy.data[0] as number });
      if (window.length > 10) window.shift();
    }
    last = { loss: window.reduce((a, w) => a + w.loss, 0) / window.length, accuracy: window.reduce((a, w) => a + w.accuracy, 0) / window.length };
    expect(last.loss).toBeLessThan(0.1);
    expect(last.accuracy).toBeGreaterThanOrEqual(0.95);
  });
});

describe('trainer safety', () => {
  it('a NaN loss raises NonFiniteError and keeps the last good weights', async () => {
    const g = new Graph();
    const p = g.input('p', [2]);
    const scale = g.input('scale', []);
    const loss = F.sumAll(F.log(F.mul(p, scale)));
    const t = await Trainer.create({ loss, params: { p: { tensor: p, init: new Float32Array([1, 2]) } }, optimizer: { kind: 'sgd', lr: 0.1 }, session: { provider: 'cpu' } });
    await t.run({ scale: new Float32Array([1]) });
    const good = Float32Array.from(t.parameter('p'));
    const err = await t.run({ scale: new Float32Array([-1]) }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(NonFiniteError);
    expect((err as NonFiniteError).step).toBe(2);
    expect((err as Error).message).toMatch(/loss became NaN.*kept at step 1/);
    expect(Array.from(t.parameter('p'))).toEqual(Array.from(good));
    expect(t.step).toBe(1);
  });

  it('saved state resumes the identical trajectory', async () => {
    const a = await buildRegressionTrainer(11);
    const b = await buildRegressionTrainer(11);
    for (let s = 0; s < 5; s++) await a.trainer.run(a.batch());
    const state = a.trainer.saveState();
    const batchesA = [a.batch(), a.batch(), a.batch()];
    const lossesA = [];
    for (const x of batchesA) lossesA.push((await a.trainer.run(x)).loss);
    b.trainer.loadState(state);
    const lossesB = [];
    for (const x of batchesA) lossesB.push((await b.trainer.run(x)).loss);
    expect(lossesB).toEqual(lossesA);
    expect(b.trainer.step).toBe(8);
  });

  it('runs in a worker thread with the same numbers as the main thread', async () => {
    const steps = 3;
    const main = await buildRegressionTrainer(21);
    const expected = [];
    for (let s = 0; s < steps; s++) expected.push((await main.trainer.run(main.batch())).loss);
    const entry = new URL('./helpers/train-worker.ts', import.meta.url).href;
    const worker = new Worker(new URL('./helpers/ts-worker.mjs', import.meta.url), { workerData: { entry, seed: 21, steps } });
    const got = await new Promise<{ losses: number[]; provider: string }>((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    await worker.terminate();
    expect(got.provider).toBe('cpu');
    expect(got.losses).toEqual(expected);
  });
});

describe('graph building and emission', () => {
  it('shape errors are raised at build time, naming the op, the input shapes and the reason', () => {
    const g = new Graph();
    const a = g.input('a', [2, 3]);
    const b = g.input('b', [4, 5]);
    expect(() => F.matmul(a, b)).toThrow(GraphBuildError);
    expect(() => F.matmul(a, b)).toThrow('matmul(float32[2,3], float32[4,5]): inner dimensions differ: 3 vs 4');
    expect(() => F.add(a, b)).toThrow(/add\(float32\[2,3\], float32\[4,5\]\): shapes \[2,3\] and \[4,5\] do not broadcast/);
    const img = g.input('img', [1, 3, 8, 8]);
    expect(() => F.conv2d(img, g.input('w', [4, 2, 3, 3]))).toThrow(/conv2d\(float32\[1,3,8,8\], float32\[4,2,3,3\]\).*weight expects 2 input channels, input has 3/);
    expect(() => F.reshape(a, [5])).toThrow(/cannot reshape 6 elements to \[5\]/);
    expect(() => F.groupNorm(img, 2, g.input('gw', [3]), g.input('gb', [3]))).toThrow(/3 channels do not split into 2 groups/);
  });

  it.skipIf(!hasShared)('frozen weights are external data pointing into the safetensors file (no copy)', async () => {
    const file = path.join(FIXTURES_DIR, 'sd1', 'clip-text', 'weights.safetensors');
    const st = openSafetensors(file);
    const info = st.info('text_model.embeddings.token_embedding.weight');
    const g = new Graph();
    const table = g.param('emb', info.shape, 'float32', { kind: 'external', file, offset: info.byteOffset, length: info.byteLength });
    const ids = g.input('ids', [3], 'int64');
    const rows = F.gather(table, ids);
    const model = emitOnnx({ rows });
    expect(model.bytes.length).toBeLessThan(4096); // the 128 kB table is not inside the model
    expect(model.externalFolder).toBe(path.dirname(file));
    const session = await Session.create(model, { provider: 'cpu' });
    const out = await session.run({ ids: new BigInt64Array([0n, 998n, 5n]) });
    const all = st.read('text_model.embeddings.token_embedding.weight') as Float32Array;
    const dim = info.shape[1];
    const want = [0, 998, 5].flatMap((r) => Array.from(all.subarray(r * dim, (r + 1) * dim)));
    expect(Array.from(out.rows.data as Float32Array)).toEqual(want);
    st.close();
  });

  it('reports the provider it got, and falls back to the CPU with a note when the asked one is missing', async () => {
    const g = new Graph();
    const x = g.input('x', [2]);
    const model = emitOnnx({ y: F.mul(x, 2) });
    const s = await Session.create(model, { provider: 'coreml' });
    if (process.platform === 'darwin') return;
    expect(s.provider).toBe('cpu');
    expect(s.fallbackNote).toMatch(/coreml failed/);
    expect(Array.from((await s.run({ x: new Float32Array([1, 2]) })).y.data as Float32Array)).toEqual([2, 4]);
  });
});
