/** `lethe generate`: text to image with a progress bar, PNGs with their parameters embedded. */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { BUILT_IN_MODEL_DIR, loadModel } from './diffusion/model.ts';
import { TextToImage } from './diffusion/pipeline.ts';
import { formatParameters, writePng } from './diffusion/png.ts';
import { LetheError } from './errors.ts';
import { progressBar } from './progress-bar.ts';
import type { ProviderName } from './runtime/session.ts';

export const VERSION = '0.1.0';


function parseSize(s: string): [number, number] {
  const m = /^(\d+)x(\d+)$/.exec(s);
  if (!m) throw new LetheError('usage', `--size must be WIDTHxHEIGHT (e.g. 512x512), got '${s}'`);
  return [Number(m[1]), Number(m[2])];
}

function parseNumber(name: string, v: string | undefined, fallback: number, integer = false): number {
  if (v === undefined) return fallback;
  const n = Number(v);
  if (!Number.isFinite(n) || (integer && !Number.isInteger(n))) throw new LetheError('usage', `--${name} must be ${integer ? 'an integer' : 'a number'}, got '${v}'`);
  return n;
}

export async function generate(args: string[]): Promise<number> {
  const { values } = parseArgs({
    args,
    options: {
      model: { type: 'string' },
      prompt: { type: 'string' },
      negative: { type: 'string', default: '' },
      seed: { type: 'string' },
      steps: { type: 'string' },
      guidance: { type: 'string' },
      size: { type: 'string' },
      count: { type: 'string' },
      eta: { type: 'string' },
      out: { type: 'string' },
      provider: { type: 'string', default: 'auto' },
      tokenizer: { type: 'string' },
    },
  });
  const modelPath = values.model ?? (existsSync(path.join(BUILT_IN_MODEL_DIR, 'model_index.json')) ? BUILT_IN_MODEL_DIR : undefined);
  if (!modelPath) {
    throw new LetheError('usage', `lethe generate: pass --model <diffusers folder | .safetensors file>; the built-in lethe-mini (${BUILT_IN_MODEL_DIR}) is not built yet`);
  }
  if (values.prompt === undefined) throw new LetheError('usage', 'lethe generate: --prompt "..." is required');
  const { opened, parts } = loadModel(modelPath, { tokenizerDir: values.tokenizer });
  const pipe = new TextToImage(parts, { provider: values.provider as ProviderName | 'auto' });
  const controller = new AbortController();
  const onSigint = () => controller.abort();
  process.once('SIGINT', onSigint);
  try {
    const defaultPx = parts.unet.config.sample_size * pipe.vaeScaleFactor;
    const [width, height] = values.size ? parseSize(values.size) : [defaultPx, defaultPx];
    const count = parseNumber('count', values.count, 1, true);
    const seed = parseNumber('seed', values.seed, Math.floor(Math.random() * 2 ** 32), true);
    const seeds = Array.from({ length: count }, (_, i) => seed + i);
    const steps = parseNumber('steps', values.steps, 25, true);
    const guidance = parseNumber('guidance', values.guidance, 7.5);
    const eta = parseNumber('eta', values.eta, 0);
    const result = await pipe.generate(
      { prompts: seeds.map(() => values.prompt!), negativePrompt: values.negative, seeds, steps, guidance, width, height, eta },
      { signal: controller.signal, onProgress: (p) => process.stderr.write(progressBar(p)) },
    );
    process.stderr.write('\n');
    for (const w of result.warnings) process.stderr.write(`warning: ${w}\n`);
    const out = values.out ?? `lethe-${seed}.png`;
    const ext = path.extname(out) || '.png';
    const stem = out.slice(0, out.length - path.extname(out).length);
    const px = width * height * 3;
    seeds.forEach((s, i) => {
      const file = count === 1 ? out : `${stem}-${i + 1}${ext}`;
      const params = formatParameters({ prompt: values.prompt!, negativePrompt: values.negative, steps, sampler: 'DDIM', guidance, seed: s, width, height, model: path.basename(opened.path), eta }, VERSION);
      writePng(file, result.pixels.subarray(i * px, (i + 1) * px), width, height, params);
      process.stdout.write(`${file}\n`);
    });
    const t = result.timings;
    if (result.providerNote) process.stderr.write(`note: ${result.providerNote}\n`);
    process.stderr.write(`provider ${result.provider}; text ${t.textMs.toFixed(0)} ms, denoise ${(t.denoiseMs / 1000).toFixed(2)} s, decode ${t.decodeMs.toFixed(0)} ms, compile ${(t.compileMs / 1000).toFixed(1)} s\n`);
    return 0;
  } finally {
    process.off('SIGINT', onSigint);
    await pipe.release();
    opened.close();
  }
}
