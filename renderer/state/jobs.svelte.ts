/**
 * Jobs as the app reports them: the queue (queued + running), the progress of
 * running jobs, and the images that arrived this session. Fed by the pushed
 * events; `refresh()` re-reads the list after a (re)connect.
 */
import type { ApiEvents, GenerationRecord, JobInfo, LetheApi } from '../../electron/contract.ts';
import { plural } from '../format.ts';

export type JobProgress = ApiEvents['job.progress'];
export type CancelMode = 'now' | 'after-image';

const KEEP_FINISHED = 50;
const KEEP_IMAGES = 500;

export class JobsState {
  jobs = $state<JobInfo[]>([]);
  progress = $state<Record<string, JobProgress>>({});
  /** Every image that arrived this session, newest first. */
  images = $state<GenerationRecord[]>([]);
  /** What this UI asked for, by job id ("4 images · a red fox"). */
  labels = $state<Record<string, string>>({});
  /** Cancels asked for and not yet finished. */
  stopping = $state<Record<string, CancelMode>>({});
  /** Jobs that ended without finishing (failed, cancelled, interrupted), until dismissed. */
  notices = $state<JobInfo[]>([]);
  cancelError = $state<string | null>(null);

  queue = $derived(this.jobs.filter((job) => job.state === 'queued' || job.state === 'running'));
  running = $derived(this.jobs.filter((job) => job.state === 'running'));
  /** Images of plain generate jobs; A/B grid images carry `grid` and show in the grid. */
  gallery = $derived(this.images.filter((record) => !record.grid));

  readonly #api: LetheApi;

  constructor(api: LetheApi) {
    this.#api = api;
  }

  /** Subscribes to the job events; returns the unsubscribe function. */
  listen(): () => void {
    const offs = [
      this.#api.on('job.queued', ({ job }) => this.#upsert(job)),
      this.#api.on('job.started', ({ job }) => this.#upsert(job)),
      this.#api.on('job.progress', (progress) => {
        this.progress[progress.jobId] = progress;
      }),
      this.#api.on('job.image', ({ generation }) => this.#addImage(generation)),
      this.#api.on('job.finished', ({ job }) => {
        this.#upsert(job);
        delete this.progress[job.id];
        delete this.stopping[job.id];
        if (job.state !== 'done') this.notices = [job, ...this.notices.filter((notice) => notice.id !== job.id)].slice(0, 5);
      }),
    ];
    return () => offs.forEach((off) => off());
  }

  async refresh(): Promise<void> {
    const result = await this.#api.call('jobs.list', {});
    if (!result.ok) return;
    for (const job of result.value) this.#upsert(job);
    const known = new Set(result.value.map((job) => job.id));
    // Jobs the app no longer lists ended while we were away: drop them from the queue.
    this.jobs = this.jobs.filter((job) => known.has(job.id) || !isActive(job));
  }

  async cancel(jobId: string, mode: CancelMode): Promise<void> {
    this.cancelError = null;
    this.stopping[jobId] = mode;
    const result = await this.#api.call('jobs.cancel', { jobId, mode });
    if (!result.ok || !result.value.cancelled) {
      delete this.stopping[jobId];
      this.cancelError = result.ok ? 'That job had already finished.' : result.error.message;
    }
  }

  label(jobId: string, text: string): void {
    this.labels[jobId] = text;
  }

  describe(job: JobInfo): string {
    return this.labels[job.id] ?? `${job.kind === 'ab-grid' ? 'A/B grid' : 'Generate'} · ${plural(job.total, 'image')}`;
  }

  imagesOf(jobId: string): GenerationRecord[] {
    return this.images.filter((record) => record.jobId === jobId);
  }

  dismiss(jobId: string): void {
    this.notices = this.notices.filter((job) => job.id !== jobId);
  }

  #upsert(job: JobInfo): void {
    const index = this.jobs.findIndex((known) => known.id === job.id);
    if (index >= 0) this.jobs[index] = job;
    else this.jobs.push(job);
    const finished = this.jobs.filter((known) => !isActive(known));
    if (finished.length > KEEP_FINISHED) {
      const drop = new Set(finished.slice(0, finished.length - KEEP_FINISHED).map((known) => known.id));
      this.jobs = this.jobs.filter((known) => !drop.has(known.id));
    }
  }

  #addImage(record: GenerationRecord): void {
    if (this.images.some((known) => known.id === record.id)) return;
    this.images = [record, ...this.images].slice(0, KEEP_IMAGES);
    const index = this.jobs.findIndex((job) => job.id === record.jobId);
    if (index >= 0) {
      const job = this.jobs[index];
      const done = this.images.filter((known) => known.jobId === job.id).length;
      if (done > job.done) this.jobs[index] = { ...job, done };
    }
  }
}

export function isActive(job: JobInfo): boolean {
  return job.state === 'queued' || job.state === 'running';
}
