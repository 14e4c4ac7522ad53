/**
 * Training-step benchmark: forward + backward + AdamW update of (a) a
 * transformer block and (b) a UNet-like conv stack, in Lethe (onnxruntime)
 * and, where PyTorch is installed, in PyTorch eager in the same run.
 * One JSON line per measurement. Each measurement runs in its own process so
 * peak RSS belongs to it alone.
 *
 *   npm run bench:step [-- --quick] [--provider cpu|cuda|webgpu|...] [--threads N]
 */
import { execFileSync, spawnSync } from 'node:child_process';
import os from 'node:os';
import { fileURLToPath } from 'node:url';
import { grad } from '../core/graph/autodiff.ts';
import type { Tensor } from '../core/graph/graph.ts';
import type { ProviderName } from '../core/runtime/session.ts';
import { Trainer } from '../core/runtime/trainer.ts';
import { buildModel, type ModelConfig } from './models.ts';

interface RunConfig {
  model: ModelConfig;
  threads: number;
  warmup: number;
  steps: number;
  provider: ProviderName | 'auto';
  memoryArena?: boolean;
  memoryPattern?: boolean;
  optimizer?: 'adamw' | 'sgd';
}

const MB = 1024 * 1024;

/** Bytes of forward tensors that the backward pass reads (what a step must keep alive). */
function savedActivationBytes(loss: Tensor, wrt: Tensor[]): number {
  const forward = new Set(loss.graph.reachable([loss]).map((t) => t.id));
  const backward = loss.graph.reachable(grad(loss, wrt)).filter((t) => !forward.has(t.id));
  const saved = new Map<number, Tensor>();
  for (const t of backward) for (const x of t.inputs) if (forward.has(x.id) && !['input', 'param', 'constant'].includes(x.op)) saved.set(x.id, x);
  return [...saved.values()].reduce((s, t) => s + t.size * 4, 0);
}

/** Seeded uniform init in [-a, a] (xorshift): the same weights on every run. */
function init(n: number, fanIn: number, seed: number): Float32Array {
  let s = seed >>> 0 || 1;
  const a = 1 / Math.sqrt(fanIn);
  return Float32Array.from({ length: n }, () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return ((s >>> 0) / 4294967296 * 2 - 1) * a;
  });
}

async function measureOne(cfg: RunConfig): Promise<Record<string, unknown>> {
  const m = buildModel(cfg.model);
  const names = Object.keys(m.params);
  const saved = savedActivationBytes(m.loss, names.map((n) => m.params[n]));
  const paramCount = names.reduce((s, n) => s + m.params[n].size, 0);
  const trainer = await Trainer.create({
    loss: m.loss,
    params: Object.fromEntries(names.map((n, k) => [n, { tensor: m.params[n], init: init(m.params[n].size, m.params[n].shape.slice(1).reduce((a, b) => a * b, 1) || 1, k + 1) }])),
    optimizer: cfg.optimizer === 'sgd' ? { kind: 'sgd', lr: 1e-4 } : { kind: 'adamw', lr: 1e-4, weightDecay: 0.01 },
    session: { provider: cfg.provider, threads: cfg.threads, memoryArena: cfg.memoryArena ?? false, memoryPattern: cfg.memoryPattern ?? false },
  });
  const feeds = Object.fromEntries(Object.entries(m.data).map(([k, shape], j) => [k, init(shape.reduce((a, b) => a * b, 1), 1, 100 + j)]));
  const baseline = process.memoryUsage().rss;
  for (let s = 0; s < cfg.warmup; s++) await trainer.run(feeds);
  const times: number[] = [];
  for (let s = 0; s < cfg.steps; s++) {
    const t0 = performance.now();
    await trainer.run(feeds);
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  const peak = process.resourceUsage().maxRSS * 1024;
  return {
    ms_per_step: times[times.length >> 1],
    min_ms_per_step: times[0],
    peak_rss_mb: peak / MB,
    step_extra_mb: (peak - baseline) / MB,
    saved_activations_mb: saved / MB,
    params_mb: (paramCount * 4) / MB,
    provider: trainer.provider,
    ...(trainer.fallbackNote ? { note: trainer.fallbackNote } : {}),
  };
}

function torchPython(): string | null {
  for (const py of ['python3', '/usr/bin/python3']) {
    try {
      execFileSync(py, ['-c', 'import torch'], { stdio: 'ignore' });
      return py;
    } catch {
      /* try the next one */
    }
  }
  return null;
}

function configs(quick: boolean): ModelConfig[] {
  const widths = quick ? [256] : [256, 512, 768];
  const channels = quick ? [64] : [64, 128, 320];
  return [
    ...widths.map((width): ModelConfig => ({ kind: 'transformer', width, seq: 77, batch: 2 })),
    ...channels.map((c): ModelConfig => ({ kind: 'conv', channels: c, size: 64, batch: 1, blocks: 2 })),
  ];
}

async function main(): Promise<void> {
  const args = process.argv.slice(2);
  const one = args.indexOf('--one');
  if (one >= 0) {
    process.stdout.write(JSON.stringify(await measureOne(JSON.parse(args[one + 1]) as RunConfig)) + '\n');
    return;
  }
  const quick = args.includes('--quick');
  const opt = (k: string): string | undefined => (args.includes(k) ? args[args.indexOf(k) + 1] : undefined);
  const threads = Number(opt('--threads') ?? os.availableParallelism());
  const provider = (opt('--provider') ?? 'cpu') as ProviderName | 'auto';
  const py = torchPython();
  const self = fileURLToPath(import.meta.url);
  for (const model of configs(quick)) {
    // Steps run back to back; the minimum is the least disturbed by other tenants of the host.
    const steps = model.kind === 'conv' && model.channels >= 320 ? 8 : 15;
    const cfg: RunConfig = { model, threads, warmup: 2, steps, provider };
    const child = spawnSync(process.execPath, ['--import', 'tsx', self, '--one', JSON.stringify(cfg)], { encoding: 'utf8', maxBuffer: 16 * MB });
    if (child.status !== 0) throw new Error(`benchmark child failed: ${child.stderr}`);
    const lethe = JSON.parse(child.stdout.trim().split('\n').pop()!) as Record<string, number>;
    let peer: Record<string, number> | null = null;
    if (py) {
      const r = spawnSync(py, [fileURLToPath(new URL('./peers/torch_step.py', import.meta.url)), JSON.stringify({ ...model, threads, warmup: 2, steps })], { encoding: 'utf8' });
      if (r.status === 0) peer = JSON.parse(r.stdout.trim().split('\n').pop()!) as Record<string, number>;
      else process.stderr.write(`torch peer failed: ${r.stderr}\n`);
    }
    const line = {
      bench: 'step',
      model: model.kind,
      config: model,
      threads,
      ...lethe,
      memory_ratio: Number((lethe.step_extra_mb / lethe.saved_activations_mb).toFixed(2)),
      ...(peer
        ? {
            torch_ms_per_step: peer.ms_per_step,
            torch_min_ms_per_step: peer.min_ms_per_step,
            torch_peak_rss_mb: peer.peak_rss_mb,
            ratio_vs_torch: Number((lethe.ms_per_step / peer.ms_per_step).toFixed(3)),
            min_ratio_vs_torch: Number((lethe.min_ms_per_step / peer.min_ms_per_step).toFixed(3)),
          }
        : { torch: 'not installed' }),
    };
    process.stdout.write(JSON.stringify(line) + '\n');
  }
}

await main();
