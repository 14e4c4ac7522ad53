/**
 * Generation benchmark, one JSON line per measurement, each in its own
 * process (peak RSS is per measurement):
 *   fixture  - s/image of the fixture-sized pipeline (tiny UNet/VAE/CLIP), 25 DDIM steps, 16x16 px
 *   mini     - the built-in lethe-mini: 4 images, 25 DDIM steps, guidance 7.5, 32x32 (the bar: <= 2 s)
 *   sd-step  - SD-1.5-shaped UNet (random fp16 weights) for 1 guided DDIM step at 512x512 (batch 2 for CFG)
 *   sd-vae   - SD-1.5-shaped VAE decode of a 64x64 latent to 512x512
 *   sd-grad  - SD-1.5-shaped UNet forward+backward (loss on the output, gradients of the cross-attention K/V)
 *
 *   npm run bench:generate [-- fixture mini sd-step sd-vae sd-grad] [--provider cpu|auto|...] [--keep-weights DIR]
 * The random SD weights (1.7 GB fp16) are written once to a temp folder and removed after.
 */
import { spawnSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { BUILT_IN_MODEL_DIR, loadModel } from '../core/diffusion/model.ts';
import { TextToImage } from '../core/diffusion/pipeline.ts';
import { parseSchedulerConfig } from '../core/diffusion/schedule.ts';
import { grad } from '../core/graph/autodiff.ts';
import * as F from '../core/graph/functional.ts';
import { Graph, type Tensor } from '../core/graph/graph.ts';
import { emitOnnx } from '../core/graph/onnx.ts';
import { f32ToF16, openSafetensors, writeSafetensors } from '../core/io/safetensors.ts';
import { parseClipTextConfig } from '../core/nn/clip-text.ts';
import { ParamBinder, prefixResolver, type Scope } from '../core/nn/params.ts';
import { parseUNetConfig, SD1_UNET_CONFIG, unet } from '../core/nn/unet.ts';
import { parseVaeConfig, SD1_VAE_CONFIG, vaeDecode } from '../core/nn/vae.ts';
import { Session, type ProviderName } from '../core/runtime/session.ts';
import { ClipTokenizer } from '../core/text/clip-tokenizer.ts';

const MB = 1024 * 1024;
const FIXTURES = path.resolve(fileURLToPath(new URL('../../shared/fixtures/sd1', import.meta.url)));

/** Names and shapes of every parameter a model builder asks for. */
function parameterShapes(build: (s: Scope) => void): Map<string, number[]> {
  const g = new Graph();
  const binder = new ParamBinder(g, () => undefined);
  build(binder.scope(''));
  return new Map(binder.boundNames().map((n) => [n, [...g.byName(n)!.shape]]));
}

/** Random fp16 weights: a 1M-value random block tiled (timing does not depend on the values). */
function writeRandomWeights(file: string, shapes: Map<string, number[]>): void {
  let s = 12345;
  const block = f32ToF16(Float32Array.from({ length: 1 << 20 }, () => {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    return (s / 4294967296 - 0.5) * 0.04;
  }));
  const tensors: Record<string, { dtype: 'F16'; shape: number[]; data: Uint16Array }> = {};
  for (const [name, shape] of shapes) {
    const n = shape.reduce((a, b) => a * b, 1);
    const data = new Uint16Array(n);
    if (name.endsWith('norm.weight') || /norm\d?\.weight$|norm_out\.weight$/.test(name)) data.fill(0x3c00);
    else if (!name.endsWith('.bias')) for (let o = 0; o < n; o += block.length) data.set(block.subarray(0, Math.min(block.length, n - o)), o);
    tensors[name] = { dtype: 'F16', shape, data };
  }
  writeSafetensors(file, tensors);
}

async function timed<T>(fn: () => Promise<T>): Promise<[T, number]> {
  const t0 = performance.now();
  const r = await fn();
  return [r, performance.now() - t0];
}

async function measure(what: string, weightsDir: string, provider: ProviderName | 'auto'): Promise<Record<string, unknown>> {
  const session = { provider, threads: os.availableParallelism() };
  if (what === 'fixture') {
    const cfg = JSON.parse(readFileSync(path.join(FIXTURES, 'pipeline/fixture.json'), 'utf8')) as { config: Record<string, unknown> };
    const files = ['unet-forward', 'clip-text', 'vae-decode'].map((d) => openSafetensors(path.join(FIXTURES, d, 'weights.safetensors')));
    const pipe = new TextToImage(
      {
        unet: { config: parseUNetConfig(cfg.config.unet), resolve: prefixResolver([files[0]]) },
        textEncoder: { config: parseClipTextConfig(cfg.config.text_encoder), resolve: prefixResolver([files[1]]), prefix: 'text_model' },
        vae: { config: parseVaeConfig(cfg.config.vae), resolve: prefixResolver([files[2]]) },
        tokenizer: ClipTokenizer.fromFiles(path.join(FIXTURES, 'pipeline/vocab.json'), path.join(FIXTURES, 'pipeline/merges.txt')),
        scheduler: parseSchedulerConfig(cfg.config.scheduler),
      },
      session,
    );
    const req = { prompts: ['a photo of a cat', 'a dog', 'a red car', 'a tree'], seeds: [1, 2, 3, 4], steps: 25, guidance: 7.5, width: 16, height: 16 };
    await pipe.generate(req); // compile
    const [r, ms] = await timed(() => pipe.generate(req));
    return { images: 4, steps: 25, size: '16x16', s_per_image: ms / 1000 / 4, denoise_ms: r.timings.denoiseMs, compile_ms: r.timings.compileMs };
  }
  if (what === 'mini') {
    const { opened, parts } = loadModel(BUILT_IN_MODEL_DIR);
    const pipe = new TextToImage(parts, session);
    const req = { prompts: ['an emoji of a cat face', 'an emoji of a red apple', 'an emoji of a rocket', 'an emoji of a sun'], seeds: [1, 2, 3, 4], steps: 25, guidance: 7.5, width: 32, height: 32 };
    const [, firstMs] = await timed(() => pipe.generate(req)); // compiles the three graphs
    const runs: number[] = [];
    let last = await pipe.generate(req);
    for (let i = 0; i < 5; i++) {
      const [r, ms] = await timed(() => pipe.generate(req));
      runs.push(ms);
      last = r;
    }
    await pipe.release();
    opened.close();
    const s4 = Math.min(...runs) / 1000;
    return { images: 4, steps: 25, size: '32x32', s_for_4_images: s4, median_s: runs.sort((a, b) => a - b)[2] / 1000, first_call_s: firstMs / 1000, denoise_ms: last.timings.denoiseMs, decode_ms: last.timings.decodeMs, text_ms: last.timings.textMs, bar_s: 2, meets_bar: s4 <= 2, provider: last.provider };
  }
  if (what === 'sd-vae') {
    const g = new Graph();
    const binder = new ParamBinder(g, prefixResolver([openSafetensors(path.join(weightsDir, 'vae.safetensors'))]));
    const z = g.input('z', [1, 4, 64, 64]);
    const model = emitOnnx({ image: vaeDecode(binder.scope(''), SD1_VAE_CONFIG, z) });
    const [s, compileMs] = await timed(() => Session.create(model, session));
    const [, ms] = await timed(() => s.run({ z: new Float32Array(4 * 64 * 64).fill(0.1) }));
    return { size: '512x512', decode_s: ms / 1000, compile_ms: compileMs, provider: s.provider };
  }
  const g = new Graph();
  const trainKV = what === 'sd-grad' ? (n: string) => /attn2\.to_[kv]\.weight$/.test(n) : () => false;
  const binder = new ParamBinder(g, prefixResolver([openSafetensors(path.join(weightsDir, 'unet.safetensors'))]), { trainable: trainKV });
  const batch = what === 'sd-step' ? 2 : 1;
  const x = g.input('x', [batch, 4, 64, 64]);
  const t = g.input('t', []);
  const ctx = g.input('context', [batch, 77, 768]);
  const out = unet(binder.scope(''), SD1_UNET_CONFIG, x, t, ctx);
  const outputs: Record<string, Tensor> = {};
  if (what === 'sd-step') {
    const [u, c] = F.split(out, 0, 2);
    outputs.next = F.add(F.mul(x.graph.node('slice', [x], { axes: [0], starts: [0], ends: [1] }), 0.99), F.mul(F.add(u, F.mul(F.sub(c, u), 7.5)), -0.1));
  } else {
    const target = g.input('target', out.shape);
    const loss = F.mse(out, target);
    const names = binder.trainableNames;
    const grads = grad(loss, names.map((n) => g.byName(n)!));
    outputs.loss = loss;
    names.forEach((n, k) => (outputs[`grad.${n}`] = grads[k]));
  }
  const model = emitOnnx(outputs);
  const [s, compileMs] = await timed(() => Session.create(model, session));
  const feeds: Record<string, Float32Array> = {
    x: new Float32Array(batch * 4 * 64 * 64).fill(0.1),
    t: new Float32Array([500]),
    context: new Float32Array(batch * 77 * 768).fill(0.05),
    target: new Float32Array(batch * 4 * 64 * 64),
  };
  for (const n of binder.trainableNames) feeds[n] = binder.initialValue(n);
  const rssAfterCreate = process.memoryUsage().rss / MB;
  const peakAfterCreate = (process.resourceUsage().maxRSS * 1024) / MB;
  const [, ms] = await timed(() => s.run(feeds));
  return {
    size: '512x512',
    batch,
    seconds: ms / 1000,
    compile_ms: compileMs,
    trainable_tensors: binder.trainableNames.length,
    provider: s.provider,
    // Session creation folds the fp16 -> fp32 casts (its own transient peak); the run's memory is what the step adds.
    rss_after_create_mb: rssAfterCreate,
    peak_during_create_mb: peakAfterCreate,
    rss_after_run_mb: process.memoryUsage().rss / MB,
  };
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const opt = (k: string): string | undefined => (args.includes(k) ? args[args.indexOf(k) + 1] : undefined);
  const provider = (opt('--provider') ?? 'cpu') as ProviderName | 'auto';
  if (args[0] === '--one') {
    const r = await measure(args[1], args[2], provider);
    process.stdout.write(JSON.stringify({ ...r, peak_rss_mb: (process.resourceUsage().maxRSS * 1024) / MB }) + '\n');
    return;
  }
  const wanted = args.filter((a) => ['fixture', 'mini', 'sd-step', 'sd-vae', 'sd-grad'].includes(a));
  const list = wanted.length ? wanted : ['fixture', 'mini', 'sd-step', 'sd-vae', 'sd-grad'];
  const keep = opt('--keep-weights');
  const dir = keep ?? mkdtempSync(path.join(os.tmpdir(), 'lethe-sd-random-'));
  try {
    if (list.some((w) => w.startsWith('sd-'))) {
      mkdirSync(dir, { recursive: true });
      const t0 = performance.now();
      writeRandomWeights(path.join(dir, 'unet.safetensors'), parameterShapes((s) => unet(s, SD1_UNET_CONFIG, s.binder.graph.input('x', [1, 4, 8, 8]), s.binder.graph.input('t', []), s.binder.graph.input('c', [1, 77, 768]))));
      writeRandomWeights(path.join(dir, 'vae.safetensors'), parameterShapes((s) => vaeDecode(s, SD1_VAE_CONFIG, s.binder.graph.input('z', [1, 4, 8, 8]))));
      process.stderr.write(`random SD-1.5-shaped weights written in ${((performance.now() - t0) / 1000).toFixed(1)} s\n`);
    }
    for (const what of list) {
      const child = spawnSync(process.execPath, ['--import', 'tsx', fileURLToPath(import.meta.url), '--one', what, dir, '--provider', provider], { encoding: 'utf8', maxBuffer: 16 * MB });
      if (child.status !== 0) {
        process.stdout.write(JSON.stringify({ bench: 'generate', what, error: child.stderr.trim().split('\n').slice(-3).join(' ') }) + '\n');
        continue;
      }
      process.stdout.write(JSON.stringify({ bench: 'generate', what, threads: os.availableParallelism(), ...JSON.parse(child.stdout.trim().split('\n').pop()!) }) + '\n');
    }
  } finally {
    if (!keep) rmSync(dir, { recursive: true, force: true });
  }
}

await main();
