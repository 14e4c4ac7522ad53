/**
 * `npm run model:mini`: builds models/lethe-mini from the emoji dataset with
 * Lethe's own trainer, in stages:
 *
 *   tokenizer  CLIP-format BPE trained on the captions
 *   clip       text + image towers, contrastive           -> text_encoder/, image_encoder/
 *   vae        AutoencoderKL 32x32x3 <-> 8x8x4             -> vae/ (scaling factor measured)
 *   unet       epsilon prediction on the frozen text tower -> unet/
 *   evaluate   zero-shot accuracy and the generated-image panel -> MODEL_CARD.md, docs/
 *
 * Everything is seeded. Each stage checkpoints (build/.cache/mini/run/) and
 * a rerun resumes where it stopped; a finished stage is reused when its
 * fingerprint (configs, data, seed, schedule) is unchanged. The model is
 * assembled in a staging folder and renamed into place at the end.
 */
import { createHash } from 'node:crypto';
import { cpSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { pathToFileURL } from 'node:url';
import { parseSchedulerConfig } from '../../core/diffusion/schedule.ts';
import { LetheError } from '../../core/errors.ts';
import { f32ToF16, openSafetensors, writeSafetensors, type TensorToWrite } from '../../core/io/safetensors.ts';
import { prefixResolver } from '../../core/nn/params.ts';
import { progressBar } from '../../core/progress-bar.ts';
import { trainClipBpe, writeTokenizerFolder } from '../../core/text/bpe-train.ts';
import { ClipTokenizer } from '../../core/text/clip-tokenizer.ts';
import { clipBatches, clipTrainer, isTextKey, isVisionKey, type ClipStageOptions } from './clip-stage.ts';
import { allCaptions, loadDataset } from './data.ts';
import { buildDataset, INDEX_FILE } from './dataset.ts';
import { evaluateMini, type Evaluation } from './evaluate.ts';
import { apacheLicenseText, modelCard, type CardInput } from './model-card.ts';
import { IMAGE_ENCODER_CONFIG, MAX_POSITIONS, SCHEDULER_CONFIG, textEncoderConfig, UNET_CONFIG, VAE_CONFIG, VOCAB_SIZE } from './model-config.ts';
import { DEFAULT_CACHE_DIR, REPO_ROOT } from './sources.ts';
import { runStage, warmupCosine, type StageProgress } from './train-loop.ts';
import { unetBatches, unetTrainer, type UNetStageOptions } from './unet-stage.ts';
import { encodeDataset, vaeBatches, vaeTrainer, type VaeStageOptions } from './vae-stage.ts';

/** Training schedule of each stage: sized so the whole build stays well under 2 hours on 2 CPU cores. */
export const SCHEDULE = {
  clip: { steps: 1000, batch: 256, lr: 1e-3, warmup: 100 },
  vae: { steps: 900, batch: 64, lr: 1e-3, warmup: 50, klWeight: 1e-4 },
  unet: { steps: 3200, batch: 64, lr: 4e-4, warmup: 200, emptyCaptionRate: 0.1 },
} as const;

export interface BuildMiniOptions {
  datasetDir?: string;
  workDir?: string;
  out?: string;
  seed?: number;
  threads?: number;
  /** Scale every stage's step count (quick trial builds, tests). */
  stepScale?: number;
  /** Overrides of SCHEDULE (small builds in tests). */
  schedule?: { [K in keyof typeof SCHEDULE]?: Partial<Record<keyof (typeof SCHEDULE)[K], number>> };
  /** Stop after this stage. */
  until?: StageName;
  fresh?: boolean;
  /** Where the generated-panel grid goes (default docs/lethe-mini-panel.png). */
  gridFile?: string;
  log?: (line: string) => void;
  onProgress?: (p: StageProgress) => void;
}

export type StageName = 'tokenizer' | 'clip' | 'vae' | 'unet';
const STAGES: readonly StageName[] = ['tokenizer', 'clip', 'vae', 'unet'];

export interface BuildMiniResult {
  modelDir: string;
  /** Training wall time per stage (ms), summed over resumed sessions. */
  stageMs: Partial<Record<StageName, number>>;
  scalingFactor?: number;
  evaluation?: Evaluation;
}

interface StageRecord {
  fingerprint: string;
  ms: number;
  [k: string]: unknown;
}

export async function buildMini(o: BuildMiniOptions = {}): Promise<BuildMiniResult> {
  const log = o.log ?? (() => {});
  const seed = o.seed ?? 20261122;
  const scale = o.stepScale ?? 1;
  const workDir = o.workDir ?? path.join(DEFAULT_CACHE_DIR, 'run');
  const datasetDir = o.datasetDir ?? path.join(DEFAULT_CACHE_DIR, 'dataset');
  const out = o.out ?? path.join(REPO_ROOT, 'models', 'lethe-mini');
  const gridFile = o.gridFile ?? path.join(REPO_ROOT, 'docs', 'lethe-mini-panel.png');
  if (o.fresh) rmSync(workDir, { recursive: true, force: true });
  const staging = path.join(workDir, 'model');
  mkdirSync(staging, { recursive: true });
  const recordsPath = path.join(workDir, 'stages.json');
  const records: Partial<Record<StageName | 'evaluate', StageRecord>> = existsSync(recordsPath) ? JSON.parse(readFileSync(recordsPath, 'utf8')) : {};
  const saveRecord = (stage: StageName | 'evaluate', r: StageRecord): void => {
    records[stage] = r;
    writeAtomic(recordsPath, JSON.stringify(records, null, 2));
  };
  const discardStale = (file: string): void => log(`${path.basename(file)}: written with other settings; starting that stage over`);
  const S = { clip: { ...SCHEDULE.clip, ...o.schedule?.clip }, vae: { ...SCHEDULE.vae, ...o.schedule?.vae }, unet: { ...SCHEDULE.unet, ...o.schedule?.unet } };
  const stepsOf = (n: number): number => Math.max(1, Math.round(n * scale));

  if (!existsSync(path.join(datasetDir, INDEX_FILE))) {
    log(`dataset: not built yet, building it in ${datasetDir}`);
    await buildDataset({ out: datasetDir, log });
  }
  const data = loadDataset(datasetDir);
  log(`dataset: ${data.count} images, ${data.index.concepts.length} concepts (${datasetDir})`);
  const dataHash = hash(data.index.sources.map((s) => s.integrity).join(','), String(data.count));
  let upstream = hash(dataHash, String(seed));
  const fingerprint = (stage: StageName | 'evaluate', settings: unknown): string => (upstream = hash(upstream, stage, JSON.stringify(settings)));
  const reuse = (stage: StageName | 'evaluate', fp: string): boolean => records[stage]?.fingerprint === fp;
  const done = (stage: StageName): boolean => o.until !== undefined && STAGES.indexOf(stage) >= STAGES.indexOf(o.until);
  const result: BuildMiniResult = { modelDir: out, stageMs: {} };

  // --- tokenizer -------------------------------------------------------------
  const tokFp = fingerprint('tokenizer', { VOCAB_SIZE, MAX_POSITIONS });
  const tokDir = path.join(staging, 'tokenizer');
  if (!reuse('tokenizer', tokFp) || !existsSync(path.join(tokDir, 'vocab.json'))) {
    const t0 = performance.now();
    writeTokenizerFolder(tokDir, trainClipBpe(allCaptions(data.index), { vocabSize: VOCAB_SIZE }), { modelMaxLength: MAX_POSITIONS });
    saveRecord('tokenizer', { fingerprint: tokFp, ms: performance.now() - t0 });
  }
  const tokenizer = ClipTokenizer.fromDirectory(tokDir);
  const vocabSize = tokenizer.vocabulary().size;
  result.stageMs.tokenizer = records.tokenizer?.ms;
  log(`tokenizer: ${vocabSize} tokens`);
  if (done('tokenizer')) return result;

  // --- mini-CLIP -------------------------------------------------------------
  const textConfig = textEncoderConfig(vocabSize);
  const longest = Math.max(...[...new Set(allCaptions(data.index))].map((c) => tokenizer.encode(c).length)) + 2;
  const clipOpts: ClipStageOptions = { textConfig, visionConfig: IMAGE_ENCODER_CONFIG, batch: Math.min(S.clip.batch, data.index.concepts.length), textLength: Math.min(longest, MAX_POSITIONS), lr: S.clip.lr, seed, threads: o.threads };
  const clipSteps = stepsOf(S.clip.steps);
  const clipFp = fingerprint('clip', { ...clipOpts, threads: undefined, clipSteps, warmup: S.clip.warmup });
  if (!reuse('clip', clipFp) || !existsSync(path.join(staging, 'image_encoder', 'model.safetensors'))) {
    log(`clip: ${clipSteps} steps of ${clipOpts.batch} image-caption pairs`);
    const trainer = await clipTrainer(clipOpts);
    const r = await runStage({
      name: 'clip', trainer, steps: clipSteps, lr: warmupCosine(clipOpts.lr, Math.min(S.clip.warmup, clipSteps), clipSteps),
      batch: clipBatches(data, tokenizer, clipOpts), checkpoint: path.join(workDir, 'clip.state.safetensors'), checkpointEvery: 100, fingerprint: clipFp, onProgress: o.onProgress, discardStale,
    });
    await trainer.release();
    writeComponent(path.join(staging, 'text_encoder'), 'model.safetensors', r.params, trainer.shapes, isTextKey, textConfig);
    writeComponent(path.join(staging, 'image_encoder'), 'model.safetensors', r.params, trainer.shapes, isVisionKey, IMAGE_ENCODER_CONFIG);
    saveRecord('clip', { fingerprint: clipFp, ms: r.trainMs, steps: clipSteps, finalLoss: r.finalLoss, logitScale: Math.exp(r.params.logit_scale[0]) });
  }
  result.stageMs.clip = records.clip?.ms;
  if (done('clip')) return result;

  // --- VAE -------------------------------------------------------------------
  const vaeOpts: VaeStageOptions = { config: VAE_CONFIG, batch: S.vae.batch, lr: S.vae.lr, klWeight: S.vae.klWeight, seed, threads: o.threads };
  const vaeSteps = stepsOf(S.vae.steps);
  const vaeFp = fingerprint('vae', { ...vaeOpts, threads: undefined, vaeSteps, warmup: S.vae.warmup });
  const vaeFile = path.join(staging, 'vae', 'diffusion_pytorch_model.safetensors');
  if (!reuse('vae', vaeFp) || !existsSync(vaeFile)) {
    log(`vae: ${vaeSteps} steps of ${vaeOpts.batch} images`);
    const trainer = await vaeTrainer(vaeOpts);
    const r = await runStage({
      name: 'vae', trainer, steps: vaeSteps, lr: warmupCosine(vaeOpts.lr, Math.min(S.vae.warmup, vaeSteps), vaeSteps),
      batch: vaeBatches(data, VAE_CONFIG, vaeOpts), checkpoint: path.join(workDir, 'vae.state.safetensors'), checkpointEvery: 100, fingerprint: vaeFp, onProgress: o.onProgress, discardStale,
    });
    await trainer.release();
    // The scaling factor is measured with the shipped (fp16) weights.
    writeComponent(path.join(staging, 'vae'), 'diffusion_pytorch_model.safetensors', r.params, trainer.shapes, () => true, VAE_CONFIG);
    const { scalingFactor } = await withFile(vaeFile, (f) => encodeDataset(data, VAE_CONFIG, prefixResolver([f])));
    writeAtomic(path.join(staging, 'vae', 'config.json'), JSON.stringify({ ...VAE_CONFIG, scaling_factor: scalingFactor }, null, 2));
    saveRecord('vae', { fingerprint: vaeFp, ms: r.trainMs, steps: vaeSteps, finalLoss: r.finalLoss, scalingFactor });
  }
  result.stageMs.vae = records.vae?.ms;
  const scalingFactor = records.vae!.scalingFactor as number;
  result.scalingFactor = scalingFactor;
  log(`vae: scaling factor ${scalingFactor.toFixed(5)}`);
  if (done('vae')) return result;

  // --- UNet ------------------------------------------------------------------
  const unetSteps = stepsOf(S.unet.steps);
  const unetSettings = { config: UNET_CONFIG, batch: S.unet.batch, lr: S.unet.lr, emptyCaptionRate: S.unet.emptyCaptionRate, scalingFactor, seed, unetSteps, warmup: S.unet.warmup };
  const unetFp = fingerprint('unet', unetSettings);
  const unetFile = path.join(staging, 'unet', 'diffusion_pytorch_model.safetensors');
  if (!reuse('unet', unetFp) || !existsSync(unetFile)) {
    log(`unet: ${unetSteps} steps of ${unetSettings.batch} latents`);
    const latents = await withFile(vaeFile, (f) => encodeDataset(data, VAE_CONFIG, prefixResolver([f])));
    const r = await withFile(path.join(staging, 'text_encoder', 'model.safetensors'), async (textFile) => {
      const unetOpts: UNetStageOptions = { ...unetSettings, textConfig, textResolve: prefixResolver([textFile]), threads: o.threads };
      const trainer = await unetTrainer(unetOpts);
      const scheduler = parseSchedulerConfig(SCHEDULER_CONFIG);
      const res = await runStage({
        name: 'unet', trainer, steps: unetSteps, lr: warmupCosine(unetOpts.lr, Math.min(S.unet.warmup, unetSteps), unetSteps),
        batch: unetBatches(data, latents, tokenizer, scheduler, unetOpts), checkpoint: path.join(workDir, 'unet.state.safetensors'), checkpointEvery: 100, fingerprint: unetFp, onProgress: o.onProgress, discardStale,
      });
      await trainer.release();
      writeComponent(path.join(staging, 'unet'), 'diffusion_pytorch_model.safetensors', res.params, trainer.shapes, () => true, UNET_CONFIG);
      return res;
    });
    saveRecord('unet', { fingerprint: unetFp, ms: r.trainMs, steps: unetSteps, finalLoss: r.finalLoss });
  }
  result.stageMs.unet = records.unet?.ms;

  // --- assemble, evaluate ------------------------------------------------------
  mkdirSync(path.join(staging, 'scheduler'), { recursive: true });
  writeAtomic(path.join(staging, 'scheduler', 'scheduler_config.json'), JSON.stringify(SCHEDULER_CONFIG, null, 2));
  writeAtomic(path.join(staging, 'model_index.json'), JSON.stringify(MODEL_INDEX, null, 2));
  writeAtomic(path.join(staging, 'image_encoder', 'preprocessor_config.json'), JSON.stringify(PREPROCESSOR_CONFIG, null, 2));
  writeAtomic(path.join(staging, 'LICENSES.md'), readFileSync(path.join(datasetDir, 'LICENSES.md'), 'utf8'));
  writeAtomic(path.join(staging, 'LICENSE-Apache-2.0.txt'), apacheLicenseText());
  const evalFp = fingerprint('evaluate', { PANEL: 1 });
  const evalPath = path.join(staging, 'evaluation.json');
  if (!reuse('evaluate', evalFp) || !existsSync(evalPath) || !existsSync(gridFile)) {
    const t0 = performance.now();
    const evaluation = await evaluateMini(staging, data, gridFile, log);
    writeAtomic(evalPath, JSON.stringify(evaluation, null, 2));
    saveRecord('evaluate', { fingerprint: evalFp, ms: performance.now() - t0 });
  }
  const evaluation = JSON.parse(readFileSync(evalPath, 'utf8')) as Evaluation;
  result.evaluation = evaluation;
  const components = { text_encoder: 'model.safetensors', image_encoder: 'model.safetensors', vae: 'diffusion_pytorch_model.safetensors', unet: 'diffusion_pytorch_model.safetensors' } as const;
  const parameters = Object.fromEntries(Object.entries(components).map(([dir, file]) => [dir, parameterCount(path.join(staging, dir, file))])) as CardInput['parameters'];
  const card = (bytes: number): string =>
    modelCard({
      configs: { text: textConfig, vision: IMAGE_ENCODER_CONFIG, vae: VAE_CONFIG, unet: UNET_CONFIG },
      parameters,
      folderBytes: bytes,
      stages: records as CardInput['stages'],
      schedule: S as unknown as CardInput['schedule'],
      seed,
      dataset: { images: data.count, concepts: data.index.concepts.length, categories: data.index.categories.length, skinToneImages: data.index.counts.skinToneImages },
      evaluation,
      gridPath: path.relative(out, gridFile).split(path.sep).join('/'),
    });
  // The card states the folder's size, itself included: write it once to measure, then with the figure.
  writeAtomic(path.join(staging, 'MODEL_CARD.md'), card(0));
  writeAtomic(path.join(staging, 'MODEL_CARD.md'), card(folderSize(staging)));
  publish(staging, out);
  log(`model: ${out}`);
  return result;
}

function parameterCount(file: string): number {
  const f = openSafetensors(file);
  try {
    let n = 0;
    for (const info of f.tensors.values()) n += info.shape.reduce((a, b) => a * b, 1);
    return n;
  } finally {
    f.close();
  }
}

function folderSize(dir: string): number {
  return SHIPPED.reduce((total, rel) => {
    const p = path.join(dir, rel);
    if (!existsSync(p)) return total;
    const st = statSync(p);
    return total + (st.isDirectory() ? readdirSync(p).reduce((a, f) => a + statSync(path.join(p, f)).size, 0) : st.size);
  }, 0);
}

/** What the model folder holds (the staging folder also keeps nothing else, but be explicit). */
const SHIPPED = ['model_index.json', 'MODEL_CARD.md', 'LICENSES.md', 'LICENSE-Apache-2.0.txt', 'evaluation.json', 'tokenizer', 'text_encoder', 'image_encoder', 'vae', 'unet', 'scheduler'];

/** The diffusers pipeline index; the image tower is the pipeline's image_encoder, as in IP-Adapter pipelines. */
const MODEL_INDEX = {
  _class_name: 'StableDiffusionPipeline',
  _diffusers_version: '0.27.0',
  feature_extractor: [null, null],
  image_encoder: ['transformers', 'CLIPVisionModelWithProjection'],
  requires_safety_checker: false,
  safety_checker: [null, null],
  scheduler: ['diffusers', 'DDIMScheduler'],
  text_encoder: ['transformers', 'CLIPTextModelWithProjection'],
  tokenizer: ['transformers', 'CLIPTokenizer'],
  unet: ['diffusers', 'UNet2DConditionModel'],
  vae: ['diffusers', 'AutoencoderKL'],
};

const PREPROCESSOR_CONFIG = {
  image_processor_type: 'CLIPImageProcessor',
  do_resize: true,
  size: { shortest_edge: IMAGE_ENCODER_CONFIG.image_size },
  do_center_crop: true,
  crop_size: { height: IMAGE_ENCODER_CONFIG.image_size, width: IMAGE_ENCODER_CONFIG.image_size },
  do_rescale: true,
  rescale_factor: 1 / 255,
  do_normalize: true,
  image_mean: [0.48145466, 0.4578275, 0.40821073],
  image_std: [0.26862954, 0.26130258, 0.27577711],
  do_convert_rgb: true,
};

/** One component folder: fp16 weights of the keys `keep` selects, and its config.json. */
function writeComponent(dir: string, file: string, params: Record<string, Float32Array>, shapes: Readonly<Record<string, readonly number[]>>, keep: (k: string) => boolean, config: object): void {
  mkdirSync(dir, { recursive: true });
  const tensors: [string, TensorToWrite][] = Object.keys(params)
    .filter(keep)
    .sort()
    .map((k) => [k, { dtype: 'F16', shape: [...shapes[k]], data: f32ToF16(params[k]) }]);
  writeSafetensors(path.join(dir, file), tensors, { format: 'pt' });
  writeAtomic(path.join(dir, 'config.json'), JSON.stringify(config, null, 2));
}

async function withFile<T>(file: string, f: (st: ReturnType<typeof openSafetensors>) => Promise<T>): Promise<T> {
  const st = openSafetensors(file);
  try {
    return await f(st);
  } finally {
    st.close();
  }
}

function writeAtomic(file: string, text: string): void {
  const tmp = `${file}.tmp-${process.pid}`;
  writeFileSync(tmp, text);
  renameSync(tmp, file);
}

/** Replaces `out` with the staged folder: the old model stays until the new one is complete. */
function publish(staging: string, out: string): void {
  mkdirSync(path.dirname(out), { recursive: true });
  const next = `${out}.next`;
  rmSync(next, { recursive: true, force: true });
  copyTree(staging, next);
  const old = `${out}.old`;
  rmSync(old, { recursive: true, force: true });
  if (existsSync(out)) renameSync(out, old);
  renameSync(next, out);
  rmSync(old, { recursive: true, force: true });
}

function copyTree(from: string, to: string): void {
  mkdirSync(to, { recursive: true });
  for (const rel of SHIPPED) {
    const src = path.join(from, rel);
    if (existsSync(src)) cpSync(src, path.join(to, rel), { recursive: true, filter: (f) => !/\.tmp-\d+$/.test(f) });
  }
}

function hash(...parts: string[]): string {
  return createHash('sha256').update(parts.join('\u0000')).digest('hex').slice(0, 16);
}

export { STAGES };

// ------------------------------------------------------------------ CLI

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      dataset: { type: 'string' },
      work: { type: 'string' },
      out: { type: 'string' },
      grid: { type: 'string' },
      seed: { type: 'string' },
      threads: { type: 'string' },
      'step-scale': { type: 'string' },
      until: { type: 'string' },
      fresh: { type: 'boolean' },
      help: { type: 'boolean', short: 'h' },
    },
  });
  if (values.help) {
    process.stdout.write('usage: npm run model:mini -- [--fresh] [--until tokenizer|clip|vae|unet] [--step-scale F] [--seed N] [--threads N] [--dataset DIR] [--work DIR] [--out DIR] [--grid PNG]\n');
    return;
  }
  const until = values.until as StageName | undefined;
  if (until !== undefined && !STAGES.includes(until)) throw new LetheError('usage', `--until must be one of ${STAGES.join(', ')}`);
  const tty = process.stderr.isTTY;
  let lastLine = 0;
  const t0 = performance.now();
  const r = await buildMini({
    datasetDir: values.dataset,
    workDir: values.work,
    out: values.out,
    gridFile: values.grid,
    seed: values.seed === undefined ? undefined : Number(values.seed),
    threads: values.threads === undefined ? undefined : Number(values.threads),
    stepScale: values['step-scale'] === undefined ? undefined : Number(values['step-scale']),
    until,
    fresh: values.fresh,
    log: (line) => process.stderr.write(`${line}\n`),
    onProgress: (p) => {
      const extra = `loss ${p.smoothLoss.toFixed(4)}`;
      if (tty) process.stderr.write(progressBar(p, p.stage, extra) + (p.step === p.total ? '\n' : ''));
      else if (performance.now() - lastLine > 30_000 || p.step === p.total) {
        lastLine = performance.now();
        process.stderr.write(`${progressBar(p, p.stage, extra).slice(1)}\n`);
      }
    },
  });
  const minutes = (ms?: number): string => (ms === undefined ? '-' : `${(ms / 60000).toFixed(1)} min`);
  process.stdout.write(`${JSON.stringify({ model: r.modelDir, stageMinutes: Object.fromEntries(Object.entries(r.stageMs).map(([k, v]) => [k, minutes(v)])), scalingFactor: r.scalingFactor, wallMinutes: minutes(performance.now() - t0) })}\n`);
}

if (process.argv[1] && import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href) {
  main().catch((e: unknown) => {
    process.stderr.write(`\nerror: ${e instanceof Error ? e.message : String(e)}\n`);
    process.exit(1);
  });
}
