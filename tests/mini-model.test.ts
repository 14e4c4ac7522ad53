/**
 * lethe-mini: the pieces its build adds to the core (PyTorch-default init,
 * from-scratch parameters, the CLIP image tower, resumable stages), the
 * whole build on a small synthetic dataset, and the shipped model itself.
 */
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildMini, type BuildMiniOptions } from '../build/mini/build-model.ts';
import { conceptPrompt, loadDataset, stepRng } from '../build/mini/data.ts';
import type { Evaluation } from '../build/mini/evaluate.ts';
import { panelConcepts } from '../build/mini/evaluate.ts';
import { runStage, StageMismatchError, warmupCosine } from '../build/mini/train-loop.ts';
import { BUILT_IN_MODEL_DIR, loadModel } from '../core/diffusion/model.ts';
import { TextToImage } from '../core/diffusion/pipeline.ts';
import { ClipEvaluator } from '../core/eval/clip-evaluator.ts';
import * as F from '../core/graph/functional.ts';
import { Graph } from '../core/graph/graph.ts';
import { emitOnnx } from '../core/graph/onnx.ts';
import { openSafetensors } from '../core/io/safetensors.ts';
import { clipVisionEncoder, parseClipVisionConfig } from '../core/nn/clip-vision.ts';
import { torchDefaultInit } from '../core/nn/init.ts';
import { ParamBinder } from '../core/nn/params.ts';
import { Session } from '../core/runtime/session.ts';
import { Trainer } from '../core/runtime/trainer.ts';
import { rng } from './helpers/gradcheck.ts';
import { writeSyntheticMiniDataset } from './helpers/synthetic-mini-dataset.ts';

const folderBytes = (d: string): number => readdirSync(d).reduce((a, f) => a + (statSync(path.join(d, f)).isDirectory() ? folderBytes(path.join(d, f)) : statSync(path.join(d, f)).size), 0);

let tmp: string;
beforeAll(() => {
  tmp = mkdtempSync(path.join(os.tmpdir(), 'lethe-mini-model-'));
});
afterAll(() => {
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

describe('from-scratch parameters', () => {
  it('PyTorch default init: U(±1/sqrt(fan_in)) weights, zero biases, unit norms, N(0, 0.02²) embeddings, independent of order', () => {
    const init = torchDefaultInit(7);
    const w = init('down_blocks.0.resnets.0.conv1.weight', [32, 16, 3, 3]);
    const bound = 1 / Math.sqrt(16 * 9);
    expect(Math.max(...w.map(Math.abs))).toBeLessThanOrEqual(bound);
    expect(Math.max(...w.map(Math.abs))).toBeGreaterThan(0.98 * bound); // 4,608 draws fill the interval
    expect(init('down_blocks.0.resnets.0.conv1.bias', [32]).every((v) => v === 0)).toBe(true);
    for (const n of ['text_model.final_layer_norm.weight', 'vision_model.pre_layrnorm.weight', 'down_blocks.0.resnets.0.norm1.weight', 'mid_block.attentions.0.transformer_blocks.0.norm3.weight']) {
      expect(init(n, [8]).every((v) => v === 1), n).toBe(true);
    }
    const emb = init('text_model.embeddings.token_embedding.weight', [4096, 32]);
    const std = Math.sqrt(emb.reduce((a, v) => a + v * v, 0) / emb.length);
    expect(std).toBeGreaterThan(0.0195);
    expect(std).toBeLessThan(0.0205);
    // A tensor's values depend on (seed, name) only.
    const again = torchDefaultInit(7)('down_blocks.0.resnets.0.conv1.weight', [32, 16, 3, 3]);
    expect(again).toEqual(w);
    expect(torchDefaultInit(8)('down_blocks.0.resnets.0.conv1.weight', [32, 16, 3, 3])).not.toEqual(w);
    expect(torchDefaultInit(7, { zero: (n) => n.startsWith('conv_out.') })('conv_out.weight', [4, 8, 3, 3]).every((v) => v === 0)).toBe(true);
  });

  it('keys the checkpoint lacks become trainable inputs with their initial values; present keys stay frozen', () => {
    const g = new Graph();
    const binder = new ParamBinder(g, () => undefined, { initialize: (name, shape) => new Float32Array(shape.reduce((a, b) => a * b, 1)).fill(name.length) });
    const t = binder.scope('layer').get('weight', [2, 3]);
    expect(t.op).toBe('input');
    expect(binder.trainableNames).toEqual(['layer.weight']);
    expect(binder.initialValue('layer.weight')).toEqual(new Float32Array(6).fill('layer.weight'.length));
    expect(() => binder.finish('m')).not.toThrow();
  });
});

describe('CLIP image tower', () => {
  const cfg = parseClipVisionConfig({ hidden_size: 8, intermediate_size: 16, projection_dim: 4, num_hidden_layers: 1, num_attention_heads: 2, image_size: 4, patch_size: 2 });

  it('reads the config and refuses bad ones', () => {
    expect(cfg).toMatchObject({ hidden_size: 8, num_channels: 3, hidden_act: 'quick_gelu', layer_norm_eps: 1e-5 });
    expect(() => parseClipVisionConfig({ image_size: 30, patch_size: 4 })).toThrow(/image_size 30 is not a multiple of patch_size 4/);
    expect(() => parseClipVisionConfig({ hidden_act: 'relu' })).toThrow(/hidden_act "relu"/);
  });

  it('patches in row-major order, class token first, learned positions, pre/post layer norms and the projection (closed form)', async () => {
    // With zero encoder weights every CLIPEncoderLayer is the identity (both branches are residual),
    // so the tower reduces to the embedding, the two norms and the projection, computed here directly.
    const rand = rng(11);
    const values = new Map<string, Float32Array>();
    const g = new Graph();
    const binder = new ParamBinder(g, () => undefined, {
      initialize: (name, shape) => {
        const n = shape.reduce((a, b) => a * b, 1);
        const v = name.includes('encoder.layers') ? new Float32Array(n) : Float32Array.from({ length: n }, () => rand() * 2 - 1);
        values.set(name, v);
        return v;
      },
    });
    const b = 2;
    const pixels = g.input('pixels', [b, 3, 4, 4]);
    const out = clipVisionEncoder(binder.scope(''), cfg, pixels);
    binder.finish('CLIP vision');
    const session = await Session.create(emitOnnx({ last: out.lastHiddenState, embeds: out.imageEmbeds }), { provider: 'cpu', threads: 1 });
    const x = Float32Array.from({ length: b * 48 }, () => rand() * 2 - 1);
    const feeds: Record<string, Float32Array> = { pixels: x };
    for (const n of binder.trainableNames) feeds[n] = values.get(n)!;
    const got = await session.run(feeds);
    await session.release();

    const v = (n: string): Float32Array => values.get(`vision_model.${n}`) ?? values.get(n)!;
    const layerNorm = (row: number[], w: Float32Array, bias: Float32Array): number[] => {
      const mean = row.reduce((a, c) => a + c, 0) / row.length;
      const variance = row.reduce((a, c) => a + (c - mean) ** 2, 0) / row.length;
      return row.map((c, i) => ((c - mean) / Math.sqrt(variance + 1e-5)) * w[i] + bias[i]);
    };
    const W = v('embeddings.patch_embedding.weight');
    const pos = v('embeddings.position_embedding.weight');
    const cls = v('embeddings.class_embedding');
    for (let bi = 0; bi < b; bi++) {
      const tokens: number[][] = [Array.from({ length: 8 }, (_, d) => cls[d] + pos[d])];
      for (let gy = 0; gy < 2; gy++) {
        for (let gx = 0; gx < 2; gx++) {
          tokens.push(
            Array.from({ length: 8 }, (_, d) => {
              let s = pos[(1 + gy * 2 + gx) * 8 + d];
              for (let c = 0; c < 3; c++) for (let ky = 0; ky < 2; ky++) for (let kx = 0; kx < 2; kx++) s += W[((d * 3 + c) * 2 + ky) * 2 + kx] * x[((bi * 3 + c) * 4 + gy * 2 + ky) * 4 + gx * 2 + kx];
              return s;
            }),
          );
        }
      }
      const h = tokens.map((t) => layerNorm(t, v('pre_layrnorm.weight'), v('pre_layrnorm.bias')));
      const lastGot = Array.from(got.last.data as Float32Array).slice(bi * 40, (bi + 1) * 40);
      h.flat().forEach((e, i) => expect(lastGot[i]).toBeCloseTo(e, 4));
      const pooled = layerNorm(h[0], v('post_layernorm.weight'), v('post_layernorm.bias'));
      const P = v('visual_projection.weight');
      const embeds = Array.from({ length: 4 }, (_, o) => pooled.reduce((a, p, d) => a + P[o * 8 + d] * p, 0));
      embeds.forEach((e, o) => expect((got.embeds.data as Float32Array)[bi * 4 + o]).toBeCloseTo(e, 4));
    }
    // transformers' CLIPVisionModelWithProjection state-dict names
    expect(binder.trainableNames.filter((n) => !n.includes('encoder.layers')).sort()).toEqual([
      'vision_model.embeddings.class_embedding',
      'vision_model.embeddings.patch_embedding.weight',
      'vision_model.embeddings.position_embedding.weight',
      'vision_model.post_layernorm.bias',
      'vision_model.post_layernorm.weight',
      'vision_model.pre_layrnorm.bias',
      'vision_model.pre_layrnorm.weight',
      'visual_projection.weight',
    ]);
  });
});

describe('resumable training stages', () => {
  async function regression(seed: number) {
    const g = new Graph();
    const x = g.input('x', [16, 2]);
    const y = g.input('y', [16, 1]);
    const binder = new ParamBinder(g, () => undefined, { initialize: torchDefaultInit(seed) });
    const s = binder.scope('');
    const h = F.silu(F.linear(x, s.scope('fc1').get('weight', [8, 2]), s.scope('fc1').get('bias', [8])));
    const loss = F.mse(F.linear(h, s.scope('fc2').get('weight', [1, 8]), s.scope('fc2').get('bias', [1])), y);
    const params = Object.fromEntries(binder.trainableNames.map((n) => [n, { tensor: g.byName(n)!, init: binder.initialValue(n) }]));
    return Trainer.create({ loss, params, optimizer: { kind: 'adamw', lr: 1e-2, weightDecay: 0.01 }, session: { provider: 'cpu', threads: 1 } });
  }
  const batch = (step: number) => {
    const r = stepRng(5, step);
    const xs = Float32Array.from({ length: 32 }, () => r() * 2 - 1);
    return { x: xs, y: Float32Array.from({ length: 16 }, (_, i) => Math.sin(3 * xs[2 * i]) * xs[2 * i + 1]) };
  };

  it('a run stopped at a checkpoint and resumed ends exactly where an uninterrupted run does', async () => {
    const straight = await regression(1);
    const full = await runStage({ name: 'r', trainer: straight, steps: 8, lr: () => 1e-2, batch, checkpoint: path.join(tmp, 'straight.safetensors'), checkpointEvery: 4, fingerprint: 'a' });
    const first = await regression(1);
    await runStage({ name: 'r', trainer: first, steps: 4, lr: () => 1e-2, batch, checkpoint: path.join(tmp, 'resumed.safetensors'), checkpointEvery: 4, fingerprint: 'a' });
    const second = await regression(1);
    const resumed = await runStage({ name: 'r', trainer: second, steps: 8, lr: () => 1e-2, batch, checkpoint: path.join(tmp, 'resumed.safetensors'), checkpointEvery: 4, fingerprint: 'a' });
    expect(resumed.resumedFrom).toBe(4);
    for (const k of Object.keys(full.params)) expect(resumed.params[k]).toEqual(full.params[k]);
    expect(resumed.finalLoss).toBe(full.finalLoss);

    // A checkpoint of other settings is refused, or discarded when the caller says so.
    const third = await regression(1);
    await expect(runStage({ name: 'r', trainer: third, steps: 8, lr: () => 1e-2, batch, checkpoint: path.join(tmp, 'resumed.safetensors'), checkpointEvery: 4, fingerprint: 'b' })).rejects.toThrow(StageMismatchError);
    const discarded: string[] = [];
    const restarted = await runStage({ name: 'r', trainer: third, steps: 2, lr: () => 1e-2, batch, checkpoint: path.join(tmp, 'resumed.safetensors'), checkpointEvery: 4, fingerprint: 'b', discardStale: (f) => discarded.push(f) });
    expect(discarded).toHaveLength(1);
    expect(restarted.resumedFrom).toBe(0);
    for (const t of [straight, first, second, third]) await t.release();
  });

  it('warm-up then cosine decay', () => {
    const lr = warmupCosine(1, 10, 110, 0.1);
    expect(lr(5)).toBeCloseTo(0.5);
    expect(lr(10)).toBeCloseTo(1);
    expect(lr(60)).toBeCloseTo(0.1 + 0.9 * 0.5);
    expect(lr(110)).toBeCloseTo(0.1);
  });
});

describe('npm run model:mini on a small synthetic dataset', () => {
  let opts: BuildMiniOptions;
  let modelDir: string;
  const stageLog: string[] = [];

  beforeAll(async () => {
    const datasetDir = path.join(tmp, 'dataset');
    writeSyntheticMiniDataset(datasetDir);
    modelDir = path.join(tmp, 'models', 'lethe-mini');
    opts = {
      datasetDir,
      workDir: path.join(tmp, 'work'),
      out: modelDir,
      gridFile: path.join(tmp, 'docs', 'panel.png'),
      threads: 1,
      schedule: { clip: { steps: 4, batch: 9, warmup: 1 }, vae: { steps: 3, batch: 4, warmup: 1 }, unet: { steps: 4, batch: 4, warmup: 1 } },
      log: (line) => stageLog.push(line),
    };
    await buildMini(opts);
  }, 240_000);

  it('writes a diffusers folder of fp16 safetensors that the SD 1.x loader and pipeline run', async () => {
    for (const p of ['model_index.json', 'MODEL_CARD.md', 'LICENSES.md', 'LICENSE-Apache-2.0.txt', 'tokenizer/vocab.json', 'tokenizer/merges.txt', 'scheduler/scheduler_config.json', 'image_encoder/preprocessor_config.json']) {
      expect(existsSync(path.join(modelDir, p)), p).toBe(true);
    }
    for (const [dir, file] of [['text_encoder', 'model.safetensors'], ['image_encoder', 'model.safetensors'], ['vae', 'diffusion_pytorch_model.safetensors'], ['unet', 'diffusion_pytorch_model.safetensors']]) {
      const f = openSafetensors(path.join(modelDir, dir, file));
      expect([...f.tensors.values()].every((t) => t.dtype === 'F16'), dir).toBe(true);
      f.close();
    }
    expect(readFileSync(path.join(modelDir, 'LICENSE-Apache-2.0.txt'), 'utf8')).toMatch(/^\s*Apache License[\s\S]*END OF TERMS AND CONDITIONS\n$/);
    const vaeConfig = JSON.parse(readFileSync(path.join(modelDir, 'vae', 'config.json'), 'utf8'));
    expect(vaeConfig.scaling_factor).toBeGreaterThan(0);
    const { opened, parts } = loadModel(modelDir);
    const pipe = new TextToImage(parts, { provider: 'cpu', threads: 1 });
    const r = await pipe.generate({ prompts: ['an emoji of a red apple', 'a blue car icon'], seeds: [1, 2], steps: 3, guidance: 7.5, width: 32, height: 32 });
    expect(r.pixels.length).toBe(2 * 32 * 32 * 3);
    await pipe.release();
    opened.close();
  });

  it('records its evaluation in evaluation.json and the model card, and writes the panel grid', () => {
    const e = JSON.parse(readFileSync(path.join(modelDir, 'evaluation.json'), 'utf8')) as Evaluation;
    expect(e.zeroShot).toMatchObject({ images: 18, concepts: 9 });
    expect(e.panel).toMatchObject({ concepts: 9, images: 36, steps: 25 });
    expect(e.panel.recognised).toBe(e.panel.entries.flatMap((p) => p.recognisedAs.filter((n) => n === p.name)).length);
    const card = readFileSync(path.join(modelDir, 'MODEL_CARD.md'), 'utf8');
    expect(card).toContain(`top-1 **${(100 * e.zeroShot.top1).toFixed(1)} %**`);
    expect(card).toContain(`**${(100 * e.panel.rate).toFixed(1)} %** of the 36 images`);
    expect(card).toContain(`${(folderBytes(modelDir) / 1e6).toFixed(1)} MB for the whole folder`);
    // 3 category rows of 3 concepts x 4 seeds, 64 px cells with gaps
    const png = readFileSync(opts.gridFile!);
    expect(png.readUInt32BE(16)).toBe(12 * 64 + 2 * 6);
    expect(png.readUInt32BE(20)).toBe(3 * (64 + 6));
  });

  it('the evaluator picks the first best match, as an arg-max over the similarities does', async () => {
    const evaluator = ClipEvaluator.open(modelDir, { provider: 'cpu', threads: 1 });
    const labels = await evaluator.embedTexts(['an emoji of a red apple', 'a blue car', 'green tree', 'an emoji of a red apple']);
    const data = loadDataset(opts.datasetDir!);
    const images = await evaluator.embedImages(data.images);
    const { predicted, similarity } = await evaluator.zeroShot(images, labels);
    const p = evaluator.projectionDim;
    for (let i = 0; i < data.count; i++) {
      const sims = [0, 1, 2, 3].map((k) => images.subarray(i * p, (i + 1) * p).reduce((a, v, d) => a + v * labels[k * p + d], 0));
      const best = Math.max(...sims);
      expect(similarity[i]).toBeCloseTo(best, 5);
      expect(predicted[i]).not.toBe(3); // label 3 repeats label 0: ties go to the first
      expect(sims[predicted[i]]).toBeCloseTo(best, 5);
    }
    await evaluator.release();
  });

  it('a rerun reuses every finished stage and publishes the same model', async () => {
    const before = readFileSync(path.join(modelDir, 'unet', 'diffusion_pytorch_model.safetensors'));
    const lines: string[] = [];
    await buildMini({ ...opts, log: (l) => lines.push(l) });
    expect(lines.some((l) => /steps of/.test(l))).toBe(false); // no stage trained again
    expect(readFileSync(path.join(modelDir, 'unet', 'diffusion_pytorch_model.safetensors')).equals(before)).toBe(true);
    expect(stageLog.filter((l) => /steps of/.test(l))).toHaveLength(3);
  }, 120_000);
});

// The committed model: checked when it is there (the repository ships it; a fresh `npm run model:mini` rebuilds it).
const shipped = existsSync(path.join(BUILT_IN_MODEL_DIR, 'model_index.json'));
describe.skipIf(!shipped)('the shipped lethe-mini', () => {
  it('is under 40 MB, fp16, and loads as an SD 1.x model with its evaluator', () => {
    expect(folderBytes(BUILT_IN_MODEL_DIR)).toBeLessThan(40e6);
    const { opened, parts } = loadModel(BUILT_IN_MODEL_DIR);
    expect(parts.unet.config.sample_size * 4).toBe(32);
    opened.close();
  });

  it('regenerates a row of its recorded panel with the recorded recognition (within 2 of 24 images)', async () => {
    const e = JSON.parse(readFileSync(path.join(BUILT_IN_MODEL_DIR, 'evaluation.json'), 'utf8')) as Evaluation;
    const category = e.panel.entries[0].category;
    const row = e.panel.entries.filter((p) => p.category === category);
    const names = e.panel.entries.map((p) => p.name);
    const evaluator = ClipEvaluator.open(BUILT_IN_MODEL_DIR, { provider: 'cpu' });
    const { opened, parts } = loadModel(BUILT_IN_MODEL_DIR);
    const pipe = new TextToImage(parts, { provider: 'cpu' });
    const r = await pipe.generate({ prompts: row.flatMap((p) => e.panel.seeds.map(() => conceptPrompt(p.name))), seeds: row.flatMap(() => [...e.panel.seeds]), steps: e.panel.steps, guidance: e.panel.guidance, width: 32, height: 32 });
    const { predicted } = await evaluator.zeroShot(await evaluator.embedImages(r.image, 'nhwc01'), await evaluator.embedTexts(names.map(conceptPrompt)));
    const recognised = row.flatMap((p, k) => e.panel.seeds.map((_, s) => names[predicted[k * e.panel.seeds.length + s]] === p.name)).filter(Boolean).length;
    const recorded = row.flatMap((p) => p.recognisedAs.filter((n) => n === p.name)).length;
    expect(Math.abs(recognised - recorded)).toBeLessThanOrEqual(2);
    await pipe.release();
    await evaluator.release();
    opened.close();
  }, 60_000);

  it.skipIf(!existsSync(path.join(process.cwd(), 'build', '.cache', 'mini', 'dataset', 'index.json')))('its panel is the fixed one: 6 concepts per category, evenly spaced', () => {
    const data = loadDataset(path.join(process.cwd(), 'build', '.cache', 'mini', 'dataset'));
    const e = JSON.parse(readFileSync(path.join(BUILT_IN_MODEL_DIR, 'evaluation.json'), 'utf8')) as Evaluation;
    expect(panelConcepts(data).map((i) => data.index.concepts[i].id)).toEqual(e.panel.entries.map((p) => p.concept));
  });
});
