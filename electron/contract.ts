/**
 * The one API contract between the studio UI and the app: every call's
 * params and result, and every pushed event. Electron (main + preload) and
 * the web transport (HTTP + WebSocket) both implement `LetheApi`; the
 * renderer only ever sees `LetheApi`. Types only: no runtime code here
 * except the channel lists that tests use to check the transports cover it.
 */

// --- data ----------------------------------------------------------------------

export interface ModelInfo {
  id: string;
  name: string;
  /** Folder or .safetensors file; for the built-in model, its folder. */
  path: string;
  layout: 'diffusers' | 'single-file';
  builtIn: boolean;
  /** Native resolution in pixels (unet sample_size x VAE scale factor). */
  defaultSize: number;
  /** Multiple that width and height must be of. */
  sizeStep: number;
  addedAt: string;
}

export interface GenerationParams {
  modelId: string;
  prompt: string;
  negativePrompt: string;
  seed: number;
  steps: number;
  guidance: number;
  width: number;
  height: number;
}

export interface GenerationRecord extends GenerationParams {
  id: string;
  modelName: string;
  /** File name inside the app's image folder. */
  image: string;
  /** URL the current transport serves the image at. */
  imageUrl: string;
  createdAt: string;
  /** Milliseconds: denoising and decoding of this image. */
  durationMs: number;
  jobId: string;
  /** Position in an A/B grid, when the image belongs to one. */
  grid?: { row: number; column: number };
}

export interface GenerateRequest {
  modelId: string;
  prompt: string;
  negativePrompt?: string;
  /** One image per seed. */
  seeds: number[];
  steps: number;
  guidance: number;
  width: number;
  height: number;
}

/** Two models side by side over prompts x seeds, identical seeds for both. */
export interface AbGridRequest {
  modelIds: [string, string];
  prompts: string[];
  seeds: number[];
  negativePrompt?: string;
  steps: number;
  guidance: number;
  width: number;
  height: number;
}

export type JobKind = 'generate' | 'ab-grid';
export type JobState = 'queued' | 'running' | 'done' | 'cancelled' | 'failed' | 'interrupted';

export interface JobInfo {
  id: string;
  kind: JobKind;
  state: JobState;
  /** Images finished / planned. */
  done: number;
  total: number;
  createdAt: string;
  error?: ApiError;
}

export interface ApiError {
  /** Stable code (LetheError.code), e.g. 'file-format', 'unsupported-model', 'invalid-request'. */
  code: string;
  /** Says what happened and what to do. */
  message: string;
}

export interface AppInfo {
  version: string;
  /** Execution provider the jobs run on, and why not the preferred one if so. */
  provider: string;
  providerNote: string | null;
  dataDir: string;
  defaultModelId: string | null;
  /** 'electron' shows native dialogs; 'web' asks for paths in a text field. */
  transport: 'electron' | 'web';
}

// --- calls ---------------------------------------------------------------------

/** Channel -> { params, result }. */
export interface ApiCalls {
  'app.info': { params: Record<string, never>; result: AppInfo };
  'models.list': { params: Record<string, never>; result: ModelInfo[] };
  /** Validates the folder or file (architecture, keys, shapes) before adding it. */
  'models.add': { params: { path: string; name?: string }; result: ModelInfo };
  'models.remove': { params: { id: string }; result: { removed: boolean } };
  /** Electron only: a native file/folder picker; the web transport returns null. */
  'models.pick': { params: Record<string, never>; result: { path: string } | null };
  'generate.start': { params: GenerateRequest; result: { jobId: string } };
  'ab.start': { params: AbGridRequest; result: { jobId: string } };
  /** 'now' stops between denoising steps; 'after-image' finishes the current image first. */
  'jobs.cancel': { params: { jobId: string; mode: 'now' | 'after-image' }; result: { cancelled: boolean } };
  'jobs.list': { params: Record<string, never>; result: JobInfo[] };
  'history.search': { params: { query?: string; limit?: number; offset?: number }; result: { items: GenerationRecord[]; total: number } };
  'history.get': { params: { id: string }; result: GenerationRecord };
}

export type CallName = keyof ApiCalls;
export type CallParams<K extends CallName> = ApiCalls[K]['params'];
export type CallResult<K extends CallName> = ApiCalls[K]['result'];

/** What a call returns over any transport: a union on `ok`, never a thrown value. */
export type ApiResult<T> = { ok: true; value: T } | { ok: false; error: ApiError };

// --- events --------------------------------------------------------------------

/** Event name -> payload, pushed from the app to every UI. */
export interface ApiEvents {
  'job.queued': { job: JobInfo; position: number };
  'job.started': { job: JobInfo };
  'job.progress': {
    jobId: string;
    /** Image index within the job (0-based) and denoising step within the image. */
    image: number;
    images: number;
    step: number;
    steps: number;
    etaMs: number;
  };
  'job.image': { jobId: string; generation: GenerationRecord };
  'job.finished': { job: JobInfo };
}

export type EventName = keyof ApiEvents;

// --- the API a UI talks to ----------------------------------------------------------

export interface LetheApi {
  call<K extends CallName>(channel: K, params: CallParams<K>): Promise<ApiResult<CallResult<K>>>;
  /** Subscribes to an event; returns the unsubscribe function. */
  on<E extends EventName>(event: E, listener: (payload: ApiEvents[E]) => void): () => void;
}

/** The app side: one handler per call, shared by the Electron IPC and the web transport. */
export type ApiHandlers = { [K in CallName]: (params: CallParams<K>) => Promise<CallResult<K>> };

/** Every channel and event, listed once at runtime for the transports to register. */
export const CALLS = [
  'app.info',
  'models.list',
  'models.add',
  'models.remove',
  'models.pick',
  'generate.start',
  'ab.start',
  'jobs.cancel',
  'jobs.list',
  'history.search',
  'history.get',
] as const satisfies readonly CallName[];

export const EVENTS = ['job.queued', 'job.started', 'job.progress', 'job.image', 'job.finished'] as const satisfies readonly EventName[];

/** Compile-time check that CALLS and EVENTS list every member (a missing one is a type error). */
type Missing<All, Listed> = Exclude<All, Listed>;
export const _everyCallListed: Missing<CallName, (typeof CALLS)[number]> extends never ? true : never = true;
export const _everyEventListed: Missing<EventName, (typeof EVENTS)[number]> extends never ? true : never = true;
