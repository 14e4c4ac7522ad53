/**
 * The job host: one compute job at a time, a queue anyone can see, the work
 * itself off the main thread in a worker (job-worker.ts). The host owns the
 * history updates (start, progress, each image's row, the end) and turns
 * the worker's reports into ApiEvents.
 *
 * How the worker is started is a parameter (`spawnWorker`): worker_threads
 * by default (`spawnThreadWorker`), Electron's utilityProcess where wanted.
 * A worker that dies mid-job fails that job; the next job gets a new one.
 */
import { randomUUID } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import { LetheError } from '../core/errors.ts';
import type { ProviderName } from '../core/runtime/session.ts';
import type { HistoryStore, NewGeneration } from '../core/store/history.ts';
import type { ApiError, ApiEvents, EventName, GenerationRecord, JobInfo, JobKind } from './contract.ts';
import type { HostMessage, PlannedImage, WorkerJob, WorkerMessage } from './job-worker.ts';

/** The host's end of a running worker. */
export interface JobWorkerChannel {
  send(message: HostMessage): void;
  onMessage(listener: (message: WorkerMessage) => void): void;
  /** Called once when the worker is gone: `error` when it crashed or exited with a non-zero code. */
  onExit(listener: (error: Error | null) => void): void;
  kill(): void;
}

export type SpawnJobWorker = () => JobWorkerChannel;

/** worker_threads: job-worker.ts loaded through tsx (the sources are TypeScript). */
export function spawnThreadWorker(): JobWorkerChannel {
  const tsxApi = import.meta.resolve('tsx/esm/api');
  const entry = new URL('./job-worker.ts', import.meta.url).href;
  const bootstrap = `import(${JSON.stringify(tsxApi)}).then((tsx) => tsx.tsImport(${JSON.stringify(entry)}, ${JSON.stringify(import.meta.url)}))`;
  const worker = new Worker(bootstrap, { eval: true });
  let crash: Error | null = null;
  worker.on('error', (e) => (crash = e));
  return {
    send: (m) => worker.postMessage(m),
    onMessage: (l) => worker.on('message', (m: WorkerMessage) => l(m)),
    onExit: (l) => worker.once('exit', (code) => l(crash ?? (code === 0 ? null : new Error(`the job worker exited with code ${code}`)))),
    kill: () => void worker.terminate(),
  };
}

export interface JobHostOptions {
  store: HistoryStore;
  imagesDir: string;
  spawnWorker: SpawnJobWorker;
  provider: ProviderName | 'auto';
  version: string;
  /** The URL the transport serves an image file at. */
  imageUrl: (file: string) => string;
  emit: <E extends EventName>(event: E, payload: ApiEvents[E]) => void;
  /** The execution provider a finished image actually ran on. */
  onProvider?: (provider: string, note: string | null) => void;
  log?: (message: string) => void;
}

export interface JobSpec {
  kind: JobKind;
  /** The request as given (kept in history). */
  params: unknown;
  models: WorkerJob['models'];
  images: Omit<PlannedImage, 'generationId'>[];
}

interface RunningJob {
  id: string;
  spec: WorkerJob;
  done: number;
  cancelledBy: 'user' | 'shutdown' | null;
}

/** How long close() waits for the worker to stop between steps before killing it. */
const SHUTDOWN_GRACE_MS = 15_000;

export function toGenerationRecord(rec: NewGeneration & { favorite?: boolean }, imageUrl: (file: string) => string): GenerationRecord {
  const { favorite: _favorite, ...generation } = rec;
  return { ...generation, imageUrl: imageUrl(generation.image) };
}

export class JobHost {
  private readonly queue: { id: string; spec: WorkerJob }[] = [];
  private current: RunningJob | null = null;
  private worker: JobWorkerChannel | null = null;
  private workerGone: Promise<void> | null = null;
  private closing = false;

  constructor(private readonly options: JobHostOptions) {}

  /** Records the job as queued and returns it at once; it runs when the ones before it are done. */
  enqueue(spec: JobSpec): JobInfo {
    if (this.closing) throw new LetheError('shutting-down', 'Lethe is shutting down and takes no new jobs; start the job again after it restarts.');
    const id = randomUUID();
    const images = spec.images.map((image) => ({ ...image, generationId: randomUUID() }));
    const job = this.options.store.createJob({ id, kind: spec.kind, total: images.length, params: spec.params });
    const position = this.queue.length + (this.current ? 1 : 0);
    const { imagesDir, provider, version } = this.options;
    this.queue.push({ id, spec: { jobId: id, imagesDir, provider, version, models: spec.models, images } });
    this.options.emit('job.queued', { job, position });
    this.pump();
    return job;
  }

  /** A queued job is dropped; the running one stops between steps ('now') or after its current image. */
  cancel(jobId: string, mode: 'now' | 'after-image'): boolean {
    const queued = this.queue.findIndex((j) => j.id === jobId);
    if (queued >= 0) {
      this.queue.splice(queued, 1);
      this.options.emit('job.finished', { job: this.options.store.finishJob(jobId, 'cancelled') });
      return true;
    }
    if (this.current?.id !== jobId || !this.worker) return false;
    this.current.cancelledBy = 'user';
    this.worker.send({ type: 'cancel', jobId, mode });
    return true;
  }

  /** Newest first: the queue, the running job and the ones before. */
  list(limit = 100): JobInfo[] {
    return this.options.store.listJobs({ limit });
  }

  /**
   * Stops taking jobs, stops the running image between steps and waits for
   * the worker to exit. Images already written are recorded; the unfinished
   * job and the queue stay open in history, to show as 'interrupted' on the
   * next start.
   */
  async close(): Promise<void> {
    this.closing = true;
    this.queue.length = 0;
    if (this.current) this.current.cancelledBy ??= 'shutdown';
    const worker = this.worker;
    const gone = this.workerGone;
    if (!worker || !gone) return;
    worker.send({ type: 'shutdown' });
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<void>((resolve) => (timer = setTimeout(resolve, SHUTDOWN_GRACE_MS)));
    await Promise.race([gone, timeout]);
    clearTimeout(timer);
    if (this.worker) worker.kill();
  }

  private pump(): void {
    if (this.current || this.closing) return;
    const next = this.queue.shift();
    if (!next) return;
    const job = this.options.store.startJob(next.id);
    this.current = { id: next.id, spec: next.spec, done: 0, cancelledBy: null };
    this.options.emit('job.started', { job });
    this.ensureWorker().send({ type: 'run', job: next.spec });
  }

  private ensureWorker(): JobWorkerChannel {
    if (this.worker) return this.worker;
    const worker = this.options.spawnWorker();
    this.worker = worker;
    this.workerGone = new Promise((resolve) => {
      worker.onExit((error) => {
        this.worker = null;
        this.workerGone = null;
        this.onWorkerExit(error);
        resolve();
      });
    });
    worker.onMessage((m) => this.onMessage(m));
    return worker;
  }

  private onMessage(m: WorkerMessage): void {
    const job = this.current;
    if (!job || job.id !== m.jobId) return;
    try {
      if (m.type === 'progress') {
        const { type: _type, ...progress } = m;
        this.options.emit('job.progress', progress);
      } else if (m.type === 'image') {
        this.recordImage(job, m);
      } else {
        this.finish(job, m.state, m.error);
        if (m.stack) this.log(`job ${job.id} failed: ${m.stack}`);
      }
    } catch (e) {
      this.log(`job ${job.id}: could not record '${m.type}': ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
    }
  }

  private recordImage(job: RunningJob, m: Extract<WorkerMessage, { type: 'image' }>): void {
    const plan = job.spec.images[m.index];
    const model = job.spec.models[plan.modelId];
    const rec: NewGeneration = {
      id: plan.generationId,
      jobId: job.id,
      modelId: plan.modelId,
      modelName: model.name,
      prompt: plan.prompt,
      negativePrompt: plan.negativePrompt,
      seed: plan.seed,
      steps: plan.steps,
      guidance: plan.guidance,
      width: plan.width,
      height: plan.height,
      image: m.image,
      durationMs: m.durationMs,
      createdAt: new Date().toISOString(),
      ...(plan.grid ? { grid: plan.grid } : {}),
    };
    job.done += 1;
    const stored = this.options.store.insertGeneration(rec, { jobDone: job.done });
    this.options.onProvider?.(m.provider, m.providerNote);
    this.options.emit('job.image', { jobId: job.id, generation: toGenerationRecord(stored, this.options.imageUrl) });
  }

  private finish(job: RunningJob, state: 'done' | 'cancelled' | 'failed', error?: ApiError): void {
    this.current = null;
    // A job stopped by shutdown stays 'running' in history: the next start marks it interrupted.
    if (!(state === 'cancelled' && job.cancelledBy === 'shutdown')) {
      this.options.emit('job.finished', { job: this.options.store.finishJob(job.id, state, error) });
    }
    this.pump();
  }

  private onWorkerExit(error: Error | null): void {
    const job = this.current;
    if (!job) return;
    if (this.closing) {
      this.current = null;
      return;
    }
    this.log(`job worker stopped during job ${job.id}: ${error?.stack ?? 'no error reported'}`);
    const reason = error ? error.message : 'it exited';
    this.finish(job, 'failed', {
      code: 'worker-crashed',
      message: `The job stopped because its worker process ended unexpectedly (${reason}). Images finished before are kept; start the job again, with fewer or smaller images if memory ran out.`,
    });
  }

  private log(message: string): void {
    (this.options.log ?? ((m: string) => console.error(m)))(message);
  }
}
