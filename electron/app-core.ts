/**
 * The app behind the API contract, shared by the Electron IPC and the web
 * transport: the history store, the model library, request validation and
 * the job host. `createAppCore` returns one handler per call, the event
 * stream, and `close()`.
 *
 * Every handler validates its params itself (over the web transport they
 * are whatever JSON a client sent) and throws LetheErrors whose message
 * reaches the UI as ApiError {code, message}.
 */
import { randomUUID } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { existsSync, mkdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { loadModel } from '../core/diffusion/model.ts';
import { InvalidRequestError } from '../core/diffusion/pipeline.ts';
import { LetheError } from '../core/errors.ts';
import { VERSION } from '../core/generate-cli.ts';
import { availableProviders, type ProviderName } from '../core/runtime/session.ts';
import { HistoryStore } from '../core/store/history.ts';
import type { AbGridRequest, ApiEvents, ApiHandlers, AppInfo, EventName, GenerateRequest, ModelInfo } from './contract.ts';
import { JobHost, spawnThreadWorker, toGenerationRecord, type JobSpec, type SpawnJobWorker } from './job-host.ts';

/** Most images one job may plan (an A/B grid counts both models). */
export const MAX_IMAGES_PER_JOB = 256;
export const MAX_STEPS = 1000;
/** Largest width or height accepted, in pixels. */
export const MAX_SIZE = 2048;
export const BUILT_IN_MODEL = 'lethe-mini';

/** The ApiEvents stream, typed per event. */
export class AppEvents {
  private readonly emitter = new EventEmitter();

  constructor() {
    this.emitter.setMaxListeners(0);
  }

  on<E extends EventName>(event: E, listener: (payload: ApiEvents[E]) => void): () => void {
    this.emitter.on(event, listener);
    return () => this.emitter.off(event, listener);
  }

  emit<E extends EventName>(event: E, payload: ApiEvents[E]): void {
    this.emitter.emit(event, payload);
  }
}

export interface AppCoreOptions {
  /** Holds history.db and images/. */
  dataDir: string;
  transport: AppInfo['transport'];
  /** The URL the transport serves a file of dataDir/images at. */
  imageUrl: (file: string) => string;
  provider?: ProviderName | 'auto';
  /** Folder holding the models shipped with the app (default: models/ of the repository). */
  builtInModelsDir?: string;
  /** How the job worker is started (default: a worker thread). */
  spawnWorker?: SpawnJobWorker;
  /** The native picker behind 'models.pick' (Electron); without it the call returns null. */
  pickModel?: () => Promise<{ path: string } | null>;
  log?: (message: string) => void;
}

export interface AppCore {
  handlers: ApiHandlers;
  events: AppEvents;
  /** Stops the running job between steps (it shows as interrupted next time), then closes the history. */
  close(): Promise<void>;
}

const DEFAULT_MODELS_DIR = fileURLToPath(new URL('../models', import.meta.url));

export function createAppCore(options: AppCoreOptions): AppCore {
  const log = options.log ?? ((m: string) => console.error(m));
  const dataDir = path.resolve(options.dataDir);
  const imagesDir = path.join(dataDir, 'images');
  mkdirSync(imagesDir, { recursive: true });
  const store = HistoryStore.open(path.join(dataDir, 'history.db'));
  const interrupted = store.markInterruptedJobs();
  if (interrupted.length) log(`${interrupted.length} job(s) were interrupted when Lethe last stopped: ${interrupted.join(', ')}`);

  const requested = options.provider ?? 'auto';
  const runtime = firstGuess(requested);
  const events = new AppEvents();
  const host = new JobHost({
    store,
    imagesDir,
    spawnWorker: options.spawnWorker ?? spawnThreadWorker,
    provider: requested,
    version: VERSION,
    imageUrl: options.imageUrl,
    emit: (event, payload) => events.emit(event, payload),
    onProvider: (provider, note) => Object.assign(runtime, { provider, note }),
    log,
  });

  registerBuiltIn(store, options.builtInModelsDir ?? DEFAULT_MODELS_DIR, log);

  const model = (id: unknown, what = 'modelId'): ModelInfo => {
    const m = store.getModel(text(id, what));
    if (!m) throw new LetheError('not-found', `There is no model with id '${String(id)}' in the library (was it removed?). Pick one from the Models page.`);
    if (!existsSync(m.path)) throw new LetheError('model-missing', `The files of model "${m.name}" are gone from ${m.path}. Put them back, or remove the model and add it again from where it is now.`);
    return m;
  };

  const handlers: ApiHandlers = {
    'app.info': async () => ({
      version: VERSION,
      provider: runtime.provider,
      providerNote: runtime.note,
      dataDir,
      defaultModelId: defaultModel(store.listModels())?.id ?? null,
      transport: options.transport,
    }),
    'models.list': async () => store.listModels(),
    'models.add': async (params) => {
      const p = record(params);
      const wanted = path.resolve(text(p.path, 'path'));
      const name = p.name === undefined || p.name === '' ? undefined : text(p.name, 'name').trim();
      const known = store.findModelByPath(wanted);
      if (known) throw new LetheError('duplicate-model', `${wanted} is already in the library as "${known.name}".`);
      return store.addModel({ id: randomUUID(), ...inspectModel(wanted), ...(name ? { name } : {}), builtIn: false });
    },
    'models.remove': async (params) => {
      const id = text(record(params).id, 'id');
      if (store.getModel(id)?.builtIn) throw new LetheError('invalid-request', 'The built-in model ships with Lethe and cannot be removed.');
      return { removed: store.removeModel(id) };
    },
    'models.pick': async () => (options.pickModel ? options.pickModel() : null),
    'generate.start': async (params) => {
      const req = generateRequest(params);
      const m = model(req.modelId);
      checkSize(req, m);
      const images = req.seeds.map((seed) => ({ modelId: m.id, prompt: req.prompt, negativePrompt: req.negativePrompt ?? '', seed, steps: req.steps, guidance: req.guidance, width: req.width, height: req.height }));
      return { jobId: host.enqueue(jobSpec('generate', req, [m], images)).id };
    },
    'ab.start': async (params) => {
      const req = abGridRequest(params);
      const models = [model(req.modelIds[0], 'modelIds[0]'), model(req.modelIds[1], 'modelIds[1]')];
      for (const m of models) checkSize(req, m);
      const images: JobSpec['images'] = [];
      req.prompts.forEach((prompt, row) =>
        req.seeds.forEach((seed, column) => {
          for (const m of models) images.push({ modelId: m.id, prompt, negativePrompt: req.negativePrompt ?? '', seed, steps: req.steps, guidance: req.guidance, width: req.width, height: req.height, grid: { row, column } });
        }),
      );
      return { jobId: host.enqueue(jobSpec('ab-grid', req, models, images)).id };
    },
    'jobs.cancel': async (params) => {
      const p = record(params);
      if (p.mode !== 'now' && p.mode !== 'after-image') throw new InvalidRequestError(`mode must be 'now' or 'after-image'`);
      return { cancelled: host.cancel(text(p.jobId, 'jobId'), p.mode) };
    },
    'jobs.list': async () => host.list(),
    'history.search': async (params) => {
      const p = record(params);
      const query = p.query === undefined ? undefined : text(p.query, 'query', true);
      const limit = p.limit === undefined ? undefined : integer(p.limit, 'limit', 0, 500);
      const offset = p.offset === undefined ? undefined : integer(p.offset, 'offset', 0, Number.MAX_SAFE_INTEGER);
      const { items, total } = store.searchGenerations({ query, limit, offset });
      return { items: items.map((g) => toGenerationRecord(g, options.imageUrl)), total };
    },
    'history.get': async (params) => {
      const id = text(record(params).id, 'id');
      const g = store.getGeneration(id);
      if (!g) throw new LetheError('not-found', `There is no image ${id} in history.`);
      return toGenerationRecord(g, options.imageUrl);
    },
  };

  let closed: Promise<void> | null = null;
  return {
    handlers,
    events,
    close: () =>
      (closed ??= host.close().finally(() => store.close())),
  };
}

/** Until an image has run, the provider that will be tried first; the first image reports the real one. */
function firstGuess(requested: ProviderName | 'auto'): { provider: string; note: string | null } {
  const tried = requested === 'auto' ? (availableProviders()[0] ?? 'cpu') : requested;
  return { provider: tried, note: tried === 'cpu' ? null : `${tried} will be tried first (falling back to cpu); the first image tells which one the jobs run on` };
}

// --- models --------------------------------------------------------------------

/** Opens and checks a model (architecture, keys, configs, tokenizer); what the library stores of it. */
function inspectModel(modelPath: string): Pick<ModelInfo, 'name' | 'path' | 'layout' | 'defaultSize' | 'sizeStep'> {
  const { opened, parts } = loadModel(modelPath);
  try {
    const sizeStep = 2 ** (parts.vae.config.block_out_channels.length - 1);
    return {
      name: path.basename(opened.path).replace(/\.safetensors$/i, ''),
      path: opened.path,
      layout: opened.layout,
      defaultSize: parts.unet.config.sample_size * sizeStep,
      sizeStep,
    };
  } finally {
    opened.close();
  }
}

/** The built-in model, else the first one added. */
const defaultModel = (models: ModelInfo[]): ModelInfo | undefined => models.find((m) => m.builtIn) ?? models[0];

/** Offers models/lethe-mini when it is there, under a fixed id (an update may move the app's folder). */
function registerBuiltIn(store: HistoryStore, modelsDir: string, log: (m: string) => void): void {
  const dir = path.resolve(modelsDir, BUILT_IN_MODEL);
  const registered = store.getModel(BUILT_IN_MODEL);
  if (registered?.path === dir && existsSync(dir)) return;
  if (registered) store.removeModel(BUILT_IN_MODEL);
  if (!existsSync(dir)) return;
  try {
    store.addModel({ id: BUILT_IN_MODEL, ...inspectModel(dir), name: 'Lethe mini', builtIn: true });
  } catch (e) {
    log(`the built-in model at ${dir} could not be opened, so it is not offered: ${e instanceof Error ? e.message : String(e)}`);
  }
}

function jobSpec(kind: JobSpec['kind'], params: GenerateRequest | AbGridRequest, models: ModelInfo[], images: JobSpec['images']): JobSpec {
  if (images.length > MAX_IMAGES_PER_JOB) throw new InvalidRequestError(`${images.length} images in one job; at most ${MAX_IMAGES_PER_JOB}: use fewer seeds or prompts`);
  return { kind, params, images, models: Object.fromEntries(models.map((m) => [m.id, { path: m.path, name: m.name }])) };
}

function checkSize(req: { width: number; height: number }, m: ModelInfo): void {
  for (const [name, v] of [['width', req.width], ['height', req.height]] as const) {
    if (v % m.sizeStep !== 0) throw new InvalidRequestError(`${name} ${v} must be a multiple of ${m.sizeStep} for "${m.name}" (e.g. ${Math.max(m.sizeStep, Math.round(v / m.sizeStep) * m.sizeStep)})`);
  }
}

// --- params --------------------------------------------------------------------

type Fields = Record<string, unknown>;

function record(v: unknown): Fields {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new InvalidRequestError('params must be an object');
  return v as Fields;
}

function text(v: unknown, name: string, allowEmpty = false): string {
  if (typeof v !== 'string' || (!allowEmpty && v.trim() === '')) throw new InvalidRequestError(`${name} must be a non-empty string`);
  return v;
}

function integer(v: unknown, name: string, min: number, max: number): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw new InvalidRequestError(`${name} must be an integer from ${min} to ${max}, got ${JSON.stringify(v)}`);
  return v;
}

function seeds(v: unknown): number[] {
  if (!Array.isArray(v) || v.length === 0) throw new InvalidRequestError('seeds must be a non-empty list of integers');
  return v.map((s, i) => integer(s, `seeds[${i}]`, 0, Number.MAX_SAFE_INTEGER));
}

/** steps, guidance, width, height, negativePrompt: what both requests share. */
function sampling(p: Fields): Pick<GenerateRequest, 'steps' | 'guidance' | 'width' | 'height' | 'negativePrompt'> {
  if (typeof p.guidance !== 'number' || !Number.isFinite(p.guidance)) throw new InvalidRequestError(`guidance must be a number, got ${JSON.stringify(p.guidance)}`);
  return {
    steps: integer(p.steps, 'steps', 1, MAX_STEPS),
    guidance: p.guidance,
    width: integer(p.width, 'width', 1, MAX_SIZE),
    height: integer(p.height, 'height', 1, MAX_SIZE),
    negativePrompt: p.negativePrompt === undefined ? '' : text(p.negativePrompt, 'negativePrompt', true),
  };
}

function generateRequest(params: unknown): GenerateRequest {
  const p = record(params);
  return { modelId: text(p.modelId, 'modelId'), prompt: text(p.prompt, 'prompt', true), seeds: seeds(p.seeds), ...sampling(p) };
}

function abGridRequest(params: unknown): AbGridRequest {
  const p = record(params);
  if (!Array.isArray(p.modelIds) || p.modelIds.length !== 2) throw new InvalidRequestError('modelIds must name two models');
  if (!Array.isArray(p.prompts) || p.prompts.length === 0) throw new InvalidRequestError('prompts must be a non-empty list');
  return {
    modelIds: [text(p.modelIds[0], 'modelIds[0]'), text(p.modelIds[1], 'modelIds[1]')],
    prompts: p.prompts.map((s: unknown, i) => text(s, `prompts[${i}]`, true)),
    seeds: seeds(p.seeds),
    ...sampling(p),
  };
}
