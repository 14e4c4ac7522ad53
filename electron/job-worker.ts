/**
 * The compute side of the job host: runs in a worker thread (or an Electron
 * utilityProcess), never on the main thread. It loads models, keeps the last
 * pipelines warm, generates one image at a time, writes each PNG atomically
 * and reports progress, each finished image and the end of the job. It never
 * touches the history database: the host records what it reports.
 *
 * The protocol types live here; the host imports them as types only.
 */
import { existsSync } from 'node:fs';
import path from 'node:path';
import { parentPort } from 'node:worker_threads';
import { loadModel } from '../core/diffusion/model.ts';
import { GenerationCancelled, TextToImage } from '../core/diffusion/pipeline.ts';
import { formatParameters, writePng } from '../core/diffusion/png.ts';
import { LetheError } from '../core/errors.ts';
import type { OpenedModel } from '../core/io/checkpoint.ts';
import type { ProviderName } from '../core/runtime/session.ts';
import type { ApiError, GenerationParams } from './contract.ts';

// --- protocol ------------------------------------------------------------------

/** One image of a job, planned by the host (ids and grid positions are fixed before it runs). */
export interface PlannedImage extends GenerationParams {
  generationId: string;
  grid?: { row: number; column: number };
}

export interface WorkerJob {
  jobId: string;
  /** Where `<generationId>.png` files go. */
  imagesDir: string;
  provider: ProviderName | 'auto';
  /** Written into each PNG's parameters. */
  version: string;
  models: Record<string, { path: string; name: string }>;
  images: PlannedImage[];
}

export type HostMessage =
  | { type: 'run'; job: WorkerJob }
  | { type: 'cancel'; jobId: string; mode: 'now' | 'after-image' }
  /** Stop the current image between steps, release everything, exit. */
  | { type: 'shutdown' };

export type WorkerMessage =
  | { type: 'progress'; jobId: string; image: number; images: number; step: number; steps: number; etaMs: number }
  | { type: 'image'; jobId: string; index: number; generationId: string; image: string; durationMs: number; provider: string; providerNote: string | null }
  | { type: 'finished'; jobId: string; state: 'done' | 'cancelled' | 'failed'; error?: ApiError; stack?: string };

/** The two ends a worker can talk through: worker_threads' parentPort or Electron's process.parentPort. */
export interface JobWorkerPort {
  postMessage(message: WorkerMessage): void;
  onMessage(listener: (message: HostMessage) => void): void;
}

// --- the worker ----------------------------------------------------------------

interface LoadedModel {
  path: string;
  opened: OpenedModel;
  pipe: TextToImage;
  provider: ProviderName | 'auto';
}

/** Pipelines kept warm: two, so an A/B grid alternates between models without reloading. */
const CACHED_MODELS = 2;

export function errorToApi(e: unknown): { error: ApiError; stack?: string } {
  if (e instanceof LetheError) return { error: { code: e.code, message: e.message } };
  const err = e instanceof Error ? e : new Error(String(e));
  return { error: { code: 'internal', message: `the job failed unexpectedly: ${err.message}` }, stack: err.stack };
}

export function serveJobs(port: JobWorkerPort): void {
  const cache = new Map<string, LoadedModel>();
  let current: { jobId: string; abort: AbortController; stopAfterImage: boolean } | null = null;
  let shuttingDown = false;
  const pending: WorkerJob[] = [];

  async function release(entry: LoadedModel): Promise<void> {
    await entry.pipe.release().catch(() => undefined);
    entry.opened.close();
  }

  /** The cached pipeline for a model, reloaded when its path changed or its files are gone. */
  async function pipelineFor(modelId: string, model: { path: string }, provider: ProviderName | 'auto'): Promise<TextToImage> {
    const hit = cache.get(modelId);
    if (hit && hit.path === model.path && hit.provider === provider && existsSync(model.path)) {
      cache.delete(modelId);
      cache.set(modelId, hit); // most recently used last
      return hit.pipe;
    }
    if (hit) {
      cache.delete(modelId);
      await release(hit);
    }
    const { opened, parts } = loadModel(model.path);
    const entry = { path: model.path, opened, pipe: new TextToImage(parts, { provider }), provider };
    cache.set(modelId, entry);
    while (cache.size > CACHED_MODELS) {
      const [oldestId, oldest] = cache.entries().next().value as [string, LoadedModel];
      cache.delete(oldestId);
      await release(oldest);
    }
    return entry.pipe;
  }

  async function run(job: WorkerJob): Promise<void> {
    const abort = new AbortController();
    current = { jobId: job.jobId, abort, stopAfterImage: false };
    const n = job.images.length;
    const imageMs: number[] = [];
    try {
      for (const [i, plan] of job.images.entries()) {
        if (abort.signal.aborted || current.stopAfterImage) throw new GenerationCancelled(0);
        const model = job.models[plan.modelId];
        const pipe = await pipelineFor(plan.modelId, model, job.provider);
        const t0 = performance.now();
        const result = await pipe.generate(
          { prompts: [plan.prompt], negativePrompt: plan.negativePrompt, seeds: [plan.seed], steps: plan.steps, guidance: plan.guidance, width: plan.width, height: plan.height },
          {
            signal: abort.signal,
            onProgress: (p) => {
              const perImage = imageMs.length ? imageMs.reduce((a, b) => a + b, 0) / imageMs.length : (p.elapsedMs / p.step) * p.total;
              const etaMs = Math.round(p.etaMs + perImage * (n - i - 1));
              port.postMessage({ type: 'progress', jobId: job.jobId, image: i, images: n, step: p.step, steps: p.total, etaMs });
            },
          },
        );
        const durationMs = performance.now() - t0;
        imageMs.push(durationMs);
        const file = `${plan.generationId}.png`;
        const parameters = formatParameters(
          { prompt: plan.prompt, negativePrompt: plan.negativePrompt, steps: plan.steps, sampler: 'DDIM', guidance: plan.guidance, seed: plan.seed, width: plan.width, height: plan.height, model: model.name },
          job.version,
        );
        writePng(path.join(job.imagesDir, file), result.pixels, plan.width, plan.height, parameters);
        port.postMessage({ type: 'image', jobId: job.jobId, index: i, generationId: plan.generationId, image: file, durationMs: Math.round(durationMs), provider: result.provider, providerNote: result.providerNote });
      }
      port.postMessage({ type: 'finished', jobId: job.jobId, state: 'done' });
    } catch (e) {
      if (e instanceof GenerationCancelled) port.postMessage({ type: 'finished', jobId: job.jobId, state: 'cancelled' });
      else port.postMessage({ type: 'finished', jobId: job.jobId, state: 'failed', ...errorToApi(e) });
    } finally {
      current = null;
    }
  }

  async function drain(): Promise<void> {
    while (pending.length && !shuttingDown) await run(pending.shift()!);
    if (shuttingDown) {
      for (const entry of cache.values()) await release(entry);
      cache.clear();
      process.exit(0);
    }
  }

  let draining: Promise<void> | null = null;
  const kick = (): void => {
    draining ??= drain().finally(() => (draining = null));
  };

  port.onMessage((message) => {
    switch (message.type) {
      case 'run':
        pending.push(message.job);
        kick();
        break;
      case 'cancel':
        if (current?.jobId !== message.jobId) break;
        if (message.mode === 'now') current.abort.abort();
        else current.stopAfterImage = true;
        break;
      case 'shutdown':
        shuttingDown = true;
        current?.abort.abort();
        kick();
        break;
    }
  });
}

/** Electron's utilityProcess side (`process.parentPort`), typed here without importing electron. */
interface ElectronParentPort {
  postMessage(message: unknown): void;
  on(event: 'message', listener: (e: { data: unknown }) => void): void;
}

const electronPort = (process as NodeJS.Process & { parentPort?: ElectronParentPort }).parentPort;
if (parentPort) {
  const port = parentPort;
  serveJobs({ postMessage: (m) => port.postMessage(m), onMessage: (l) => port.on('message', (m: HostMessage) => l(m)) });
} else if (electronPort) {
  serveJobs({ postMessage: (m) => electronPort.postMessage(m), onMessage: (l) => electronPort.on('message', (e) => l(e.data as HostMessage)) });
}
