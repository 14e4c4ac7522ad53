/**
 * The studio's local history: models, jobs, generated images, and (later)
 * erasure runs, in one SQLite file (better-sqlite3, synchronous).
 *
 * - WAL journal, `synchronous = NORMAL`, foreign keys on, a busy timeout so a
 *   second process (the CLI beside the app) waits instead of failing.
 * - The schema is versioned by `PRAGMA user_version` (see migrations.ts).
 * - A file that is not a SQLite database, is damaged, or was written by a
 *   newer Lethe is refused with a `StoreError` that says what to do; it is
 *   never modified or overwritten.
 * - Writes that belong together run in one IMMEDIATE transaction; statements
 *   are prepared once and cached.
 */
import { closeSync, mkdirSync, openSync, readSync, statSync } from 'node:fs';
import path from 'node:path';
import Database from 'better-sqlite3';
import type { ApiError, GenerationRecord, JobInfo, JobKind, JobState, ModelInfo } from '../../electron/contract.ts';
import { LetheError } from '../errors.ts';
import { LATEST_VERSION, migrate, userVersion } from './migrations.ts';

type Db = Database.Database;
type Stmt = Database.Statement<unknown[], unknown>;

// --- errors -------------------------------------------------------------------------

export type StoreErrorReason =
  /** Not a SQLite database, or damaged. */
  | 'corrupt'
  /** Written by a newer Lethe (user_version above the newest this build knows). */
  | 'newer-version'
  /** The file or its folder cannot be opened (permissions, a folder in its place, locked). */
  | 'cannot-open'
  /** A row with this id (or a model with this path) already exists. */
  | 'conflict'
  /** The row a write refers to does not exist. */
  | 'not-found'
  /** A job state change that its current state does not allow, or a malformed value. */
  | 'invalid';

/** Anything wrong with the history database. `code` is 'store'; `reason` says which case. */
export class StoreError extends LetheError {
  constructor(
    readonly reason: StoreErrorReason,
    readonly file: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super('store', message, options);
  }
}

// --- shapes -------------------------------------------------------------------------

export type NewModel = Omit<ModelInfo, 'addedAt'> & { addedAt?: string };

/** What the store keeps of a generation: everything but `imageUrl`, which the transport adds. */
export type NewGeneration = Omit<GenerationRecord, 'imageUrl'>;

export interface StoredGeneration extends NewGeneration {
  favorite: boolean;
}

export interface NewJob {
  id: string;
  kind: JobKind;
  total: number;
  /** The request the job runs (JSON-serialisable); kept to show or re-run it. */
  params: unknown;
  createdAt?: string;
}

/** A job with everything the store keeps about it. */
export interface JobRecord extends JobInfo {
  params: unknown;
  startedAt: string | null;
  finishedAt: string | null;
}

export type FinishedJobState = 'done' | 'cancelled' | 'failed';

export interface GenerationQuery {
  /** Matches prompt, negative prompt, model name (substring, ASCII case-insensitive), or an exact seed. */
  query?: string;
  /** Default 50; at most 500. */
  limit?: number;
  offset?: number;
  /** Only favourites (true) or only non-favourites (false). */
  favorite?: boolean;
}

export interface OpenOptions {
  /** Clock for created/started/finished times (tests). */
  now?: () => Date;
  /** How long a write waits for another process's lock. Default 5000 ms. */
  busyTimeoutMs?: number;
}

export const DEFAULT_SEARCH_LIMIT = 50;
export const MAX_SEARCH_LIMIT = 500;

// --- rows ---------------------------------------------------------------------------

interface ModelRow {
  id: string;
  name: string;
  path: string;
  layout: ModelInfo['layout'];
  built_in: number;
  default_size: number;
  size_step: number;
  added_at: string;
}

interface JobRow {
  id: string;
  kind: JobKind;
  state: JobState;
  done: number;
  total: number;
  params_json: string;
  error_code: string | null;
  error_message: string | null;
  created_at: string;
  started_at: string | null;
  finished_at: string | null;
}

interface GenerationRow {
  id: string;
  job_id: string;
  model_id: string;
  model_name: string;
  prompt: string;
  negative_prompt: string;
  seed: number;
  steps: number;
  guidance: number;
  width: number;
  height: number;
  image: string;
  duration_ms: number;
  created_at: string;
  grid_row: number | null;
  grid_column: number | null;
  favorite: number;
}

const SQLITE_HEADER = Buffer.from('SQLite format 3\0', 'latin1');

const GENERATION_COLUMNS =
  'id, job_id, model_id, model_name, prompt, negative_prompt, seed, steps, guidance, width, height, image, duration_ms, created_at, grid_row, grid_column, favorite';

// --- the store ----------------------------------------------------------------------

export class HistoryStore {
  private readonly statements = new Map<string, Stmt>();
  private closed = false;

  private constructor(
    private readonly db: Db,
    /** Absolute path of the database file (or ':memory:'). */
    readonly file: string,
    private readonly now: () => Date,
  ) {}

  /**
   * Opens (creating if missing) and migrates the history database at `file`.
   * Throws `StoreError` for a file that is not a SQLite database or is
   * damaged ('corrupt'), that a newer Lethe wrote ('newer-version'), or that
   * cannot be opened ('cannot-open'); such a file is left exactly as it was.
   */
  static open(file: string, options: OpenOptions = {}): HistoryStore {
    const memory = file === ':memory:';
    const resolved = memory ? file : path.resolve(file);
    const busyTimeoutMs = options.busyTimeoutMs ?? 5000;
    if (!memory) {
      checkHeader(resolved);
      try {
        mkdirSync(path.dirname(resolved), { recursive: true });
      } catch (err) {
        throw cannotOpen(resolved, err);
      }
    }

    let db: Db;
    try {
      db = new Database(resolved, { timeout: busyTimeoutMs });
    } catch (err) {
      throw toOpenError(resolved, err);
    }
    try {
      db.pragma(`busy_timeout = ${Math.max(0, Math.floor(busyTimeoutMs))}`);
      // Read-only checks first: a refused file must not be touched (switching
      // to WAL rewrites the header).
      const version = userVersion(db);
      if (version > LATEST_VERSION) {
        throw new StoreError(
          'newer-version',
          resolved,
          `The history database ${resolved} was written by a newer version of Lethe ` +
            `(schema version ${version}; this version knows up to ${LATEST_VERSION}). It has not been changed. ` +
            `Update Lethe to use it, or quit Lethe and move the file aside (with any ${path.basename(resolved)}-wal ` +
            `and -shm files beside it) to start with an empty history.`,
        );
      }
      const check = (db.pragma('quick_check') as Array<Record<string, unknown>>).map((row) => String(Object.values(row)[0]));
      if (check.length !== 1 || check[0] !== 'ok') {
        throw corrupt(resolved, check.slice(0, 5).join('; '));
      }
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = NORMAL');
      db.pragma('foreign_keys = ON');
      migrate(db);
    } catch (err) {
      db.close();
      throw toOpenError(resolved, err);
    }
    return new HistoryStore(db, resolved, options.now ?? (() => new Date()));
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.statements.clear();
    this.db.close();
  }

  /** Schema version of the open database (LATEST_VERSION once opened). */
  get schemaVersion(): number {
    return userVersion(this.db);
  }

  /** 'wal' for a file database. */
  get journalMode(): string {
    return String(this.db.pragma('journal_mode', { simple: true }));
  }

  /** `PRAGMA integrity_check`: 'ok' when the database is sound, else the problems, one a line. */
  integrityCheck(): string {
    const rows = this.db.pragma('integrity_check') as Array<Record<string, unknown>>;
    return rows.map((row) => String(Object.values(row)[0])).join('\n');
  }

  /** Runs `fn` in one IMMEDIATE transaction (a savepoint when nested); rolls back if it throws. */
  transaction<T>(fn: () => T): T {
    return this.db.transaction(fn).immediate();
  }

  // --- models -----------------------------------------------------------------------

  addModel(info: NewModel): ModelInfo {
    requireText(this.file, 'model id', info.id);
    requireText(this.file, 'model name', info.name);
    requireText(this.file, 'model path', info.path);
    requirePositiveInt(this.file, 'defaultSize', info.defaultSize);
    requirePositiveInt(this.file, 'sizeStep', info.sizeStep);
    const model: ModelInfo = { ...info, addedAt: info.addedAt ?? this.timestamp() };
    return this.transaction(() => {
      const existing = this.findModelByPath(model.path);
      if (existing) {
        throw new StoreError(
          'conflict',
          this.file,
          `The model at ${model.path} is already in the library as "${existing.name}" (id ${existing.id}).`,
        );
      }
      try {
        this.stmt(
          `INSERT INTO models (id, name, path, layout, built_in, default_size, size_step, added_at)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
        ).run(model.id, model.name, model.path, model.layout, model.builtIn ? 1 : 0, model.defaultSize, model.sizeStep, model.addedAt);
      } catch (err) {
        throw this.constraintError(err, `A model with id ${model.id} already exists.`);
      }
      return this.getModel(model.id)!;
    });
  }

  /** Built-in models first, then in the order they were added. */
  listModels(): ModelInfo[] {
    const rows = this.stmt('SELECT * FROM models ORDER BY built_in DESC, added_at, rowid').all() as ModelRow[];
    return rows.map(toModel);
  }

  getModel(id: string): ModelInfo | undefined {
    const row = this.stmt('SELECT * FROM models WHERE id = ?').get(id) as ModelRow | undefined;
    return row && toModel(row);
  }

  findModelByPath(modelPath: string): ModelInfo | undefined {
    const row = this.stmt('SELECT * FROM models WHERE path = ?').get(modelPath) as ModelRow | undefined;
    return row && toModel(row);
  }

  /** Removes the model from the library; its generations stay, with their model name. */
  removeModel(id: string): boolean {
    return this.stmt('DELETE FROM models WHERE id = ?').run(id).changes > 0;
  }

  // --- jobs -------------------------------------------------------------------------

  /** Records a new job in state 'queued'. */
  createJob(job: NewJob): JobInfo {
    requireText(this.file, 'job id', job.id);
    requireText(this.file, 'job kind', job.kind);
    requireNonNegativeInt(this.file, 'job total', job.total);
    const paramsJson = JSON.stringify(job.params ?? null);
    const createdAt = job.createdAt ?? this.timestamp();
    return this.transaction(() => {
      try {
        this.stmt(
          `INSERT INTO jobs (id, kind, state, done, total, params_json, created_at)
           VALUES (?, ?, 'queued', 0, ?, ?, ?)`,
        ).run(job.id, job.kind, job.total, paramsJson, createdAt);
      } catch (err) {
        throw this.constraintError(err, `A job with id ${job.id} already exists.`);
      }
      return this.getJob(job.id)!;
    });
  }

  /** queued -> running. */
  startJob(id: string): JobInfo {
    return this.transaction(() => {
      const changes = this.stmt(`UPDATE jobs SET state = 'running', started_at = ? WHERE id = ? AND state = 'queued'`).run(
        this.timestamp(),
        id,
      ).changes;
      if (changes === 0) throw this.transitionError(id, 'start', ['queued']);
      return this.getJob(id)!;
    });
  }

  /** Sets how many images of a running job are finished (0..total). */
  updateJobProgress(id: string, done: number): void {
    requireNonNegativeInt(this.file, 'job progress', done);
    this.transaction(() => {
      const row = this.jobRow(id);
      if (!row) throw this.jobNotFound(id);
      if (row.state !== 'running') throw this.transitionError(id, 'update the progress of', ['running']);
      if (done > row.total) {
        throw new StoreError('invalid', this.file, `Job ${id} has ${row.total} images; progress ${done} is past its end.`);
      }
      this.stmt('UPDATE jobs SET done = ? WHERE id = ?').run(done, id);
    });
  }

  /** queued or running -> done, cancelled, or failed (with the error that ended it). */
  finishJob(id: string, state: FinishedJobState, error?: ApiError): JobInfo {
    if (state !== 'done' && state !== 'cancelled' && state !== 'failed') {
      throw new StoreError('invalid', this.file, `A job cannot finish as '${String(state)}'.`);
    }
    return this.transaction(() => {
      const changes = this.stmt(
        `UPDATE jobs SET state = ?, finished_at = ?, error_code = ?, error_message = ?
         WHERE id = ? AND state IN ('queued', 'running')`,
      ).run(state, this.timestamp(), error?.code ?? null, error?.message ?? null, id).changes;
      if (changes === 0) throw this.transitionError(id, `finish (as ${state})`, ['queued', 'running']);
      return this.getJob(id)!;
    });
  }

  /** Newest first; `states` filters (an empty list matches nothing); no limit by default. */
  listJobs(options: { states?: readonly JobState[]; limit?: number } = {}): JobInfo[] {
    const limit = options.limit ?? -1;
    if (options.limit !== undefined) requireNonNegativeInt(this.file, 'limit', options.limit);
    const rows = (
      options.states
        ? this.stmt(
            `SELECT * FROM jobs WHERE state IN (SELECT value FROM json_each(?))
             ORDER BY created_at DESC, rowid DESC LIMIT ?`,
          ).all(JSON.stringify(options.states), limit)
        : this.stmt('SELECT * FROM jobs ORDER BY created_at DESC, rowid DESC LIMIT ?').all(limit)
    ) as JobRow[];
    return rows.map(toJobInfo);
  }

  getJob(id: string): JobInfo | undefined {
    const row = this.jobRow(id);
    return row && toJobInfo(row);
  }

  /** The job with its params and start/finish times. */
  getJobRecord(id: string): JobRecord | undefined {
    const row = this.jobRow(id);
    if (!row) return undefined;
    return { ...toJobInfo(row), params: JSON.parse(row.params_json) as unknown, startedAt: row.started_at, finishedAt: row.finished_at };
  }

  /**
   * At app start: every job a previous run left 'queued' or 'running' (it
   * crashed or was killed) becomes 'interrupted'. Returns their ids, oldest
   * first. Finished jobs and all generations are left as they are.
   */
  markInterruptedJobs(): string[] {
    return this.transaction(() => {
      const ids = (
        this.stmt(`SELECT id FROM jobs WHERE state IN ('queued', 'running') ORDER BY created_at, rowid`).all() as Array<{
          id: string;
        }>
      ).map((row) => row.id);
      this.stmt(`UPDATE jobs SET state = 'interrupted' WHERE state IN ('queued', 'running')`).run();
      return ids;
    });
  }

  // --- generations ------------------------------------------------------------------

  /**
   * Records one generated image. Its job must exist. With `jobDone`, the
   * job's progress is set in the same transaction (the job must be running).
   */
  insertGeneration(rec: NewGeneration, options: { jobDone?: number } = {}): StoredGeneration {
    this.validateGeneration(rec);
    return this.transaction(() => {
      try {
        this.stmt(
          `INSERT INTO generations (${GENERATION_COLUMNS})
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0)`,
        ).run(
          rec.id,
          rec.jobId,
          rec.modelId,
          rec.modelName,
          rec.prompt,
          rec.negativePrompt,
          rec.seed,
          rec.steps,
          rec.guidance,
          rec.width,
          rec.height,
          rec.image,
          rec.durationMs,
          rec.createdAt,
          rec.grid?.row ?? null,
          rec.grid?.column ?? null,
        );
      } catch (err) {
        if (err instanceof Database.SqliteError && err.code === 'SQLITE_CONSTRAINT_FOREIGNKEY') {
          throw new StoreError('not-found', this.file, `Generation ${rec.id} belongs to job ${rec.jobId}, which is not in history.`, {
            cause: err,
          });
        }
        throw this.constraintError(err, `A generation with id ${rec.id} already exists.`);
      }
      if (options.jobDone !== undefined) this.updateJobProgress(rec.jobId, options.jobDone);
      return this.getGeneration(rec.id)!;
    });
  }

  getGeneration(id: string): StoredGeneration | undefined {
    const row = this.stmt(`SELECT ${GENERATION_COLUMNS} FROM generations WHERE id = ?`).get(id) as GenerationRow | undefined;
    return row && toGeneration(row);
  }

  /** Marks or unmarks a generation as a favourite; false if there is no such generation. */
  setFavorite(id: string, favorite: boolean): boolean {
    return this.stmt('UPDATE generations SET favorite = ? WHERE id = ?').run(favorite ? 1 : 0, id).changes > 0;
  }

  /** Newest first, with the total number of matches (for paging). */
  searchGenerations(options: GenerationQuery = {}): { items: StoredGeneration[]; total: number } {
    const limit = Math.min(options.limit ?? DEFAULT_SEARCH_LIMIT, MAX_SEARCH_LIMIT);
    const offset = options.offset ?? 0;
    requireNonNegativeInt(this.file, 'limit', limit);
    requireNonNegativeInt(this.file, 'offset', offset);

    const where: string[] = [];
    const params: unknown[] = [];
    const text = (options.query ?? '').trim();
    if (text !== '') {
      const pattern = `%${escapeLike(text)}%`;
      const match = [
        `prompt LIKE ? ESCAPE '\\'`,
        `negative_prompt LIKE ? ESCAPE '\\'`,
        `model_name LIKE ? ESCAPE '\\'`,
      ];
      params.push(pattern, pattern, pattern);
      const seed = /^-?\d{1,16}$/.test(text) ? Number(text) : NaN;
      if (Number.isSafeInteger(seed)) {
        match.push('seed = ?');
        params.push(seed);
      }
      where.push(`(${match.join(' OR ')})`);
    }
    if (options.favorite !== undefined) {
      where.push('favorite = ?');
      params.push(options.favorite ? 1 : 0);
    }
    const whereSql = where.length ? `WHERE ${where.join(' AND ')}` : '';

    // One read transaction: the page and the total come from the same snapshot.
    return this.db.transaction(() => {
      const { n } = this.stmt(`SELECT count(*) AS n FROM generations ${whereSql}`).get(...params) as { n: number };
      const rows = this.stmt(
        `SELECT ${GENERATION_COLUMNS} FROM generations ${whereSql} ORDER BY created_at DESC, rowid DESC LIMIT ? OFFSET ?`,
      ).all(...params, limit, offset) as GenerationRow[];
      return { items: rows.map(toGeneration), total: n };
    })();
  }

  // --- internals --------------------------------------------------------------------

  private stmt(sql: string): Stmt {
    if (this.closed) throw new StoreError('invalid', this.file, 'The history database is closed.');
    let statement = this.statements.get(sql);
    if (!statement) {
      statement = this.db.prepare(sql);
      this.statements.set(sql, statement);
    }
    return statement;
  }

  private timestamp(): string {
    return this.now().toISOString();
  }

  private jobRow(id: string): JobRow | undefined {
    return this.stmt('SELECT * FROM jobs WHERE id = ?').get(id) as JobRow | undefined;
  }

  private jobNotFound(id: string): StoreError {
    return new StoreError('not-found', this.file, `There is no job ${id} in history.`);
  }

  private transitionError(id: string, action: string, allowed: JobState[]): StoreError {
    const row = this.jobRow(id);
    if (!row) return this.jobNotFound(id);
    return new StoreError(
      'invalid',
      this.file,
      `Cannot ${action} job ${id}: it is ${row.state}, and only a ${allowed.join(' or ')} job can be.`,
    );
  }

  private constraintError(err: unknown, duplicateMessage: string): unknown {
    if (err instanceof Database.SqliteError && (err.code === 'SQLITE_CONSTRAINT_PRIMARYKEY' || err.code === 'SQLITE_CONSTRAINT_UNIQUE')) {
      return new StoreError('conflict', this.file, duplicateMessage, { cause: err });
    }
    if (err instanceof Database.SqliteError && err.code.startsWith('SQLITE_CONSTRAINT')) {
      return new StoreError('invalid', this.file, `A value was rejected by the history database: ${err.message}`, { cause: err });
    }
    return err;
  }

  private validateGeneration(rec: NewGeneration): void {
    requireText(this.file, 'generation id', rec.id);
    requireText(this.file, 'job id', rec.jobId);
    requireText(this.file, 'model id', rec.modelId);
    requireText(this.file, 'image', rec.image);
    if (typeof rec.modelName !== 'string' || typeof rec.prompt !== 'string' || typeof rec.negativePrompt !== 'string') {
      throw new StoreError('invalid', this.file, `Generation ${rec.id}: modelName, prompt and negativePrompt must be strings.`);
    }
    if (!Number.isSafeInteger(rec.seed)) throw new StoreError('invalid', this.file, `Generation ${rec.id}: seed ${rec.seed} is not an integer.`);
    requirePositiveInt(this.file, 'steps', rec.steps);
    requirePositiveInt(this.file, 'width', rec.width);
    requirePositiveInt(this.file, 'height', rec.height);
    if (!Number.isFinite(rec.guidance)) throw new StoreError('invalid', this.file, `Generation ${rec.id}: guidance must be a finite number.`);
    if (!Number.isFinite(rec.durationMs) || rec.durationMs < 0) {
      throw new StoreError('invalid', this.file, `Generation ${rec.id}: durationMs must be a finite number >= 0.`);
    }
    requireText(this.file, 'createdAt', rec.createdAt);
    if (rec.grid) {
      requireNonNegativeInt(this.file, 'grid row', rec.grid.row);
      requireNonNegativeInt(this.file, 'grid column', rec.grid.column);
    }
  }
}

// --- helpers ------------------------------------------------------------------------

function toModel(row: ModelRow): ModelInfo {
  return {
    id: row.id,
    name: row.name,
    path: row.path,
    layout: row.layout,
    builtIn: row.built_in === 1,
    defaultSize: row.default_size,
    sizeStep: row.size_step,
    addedAt: row.added_at,
  };
}

function toJobInfo(row: JobRow): JobInfo {
  const job: JobInfo = { id: row.id, kind: row.kind, state: row.state, done: row.done, total: row.total, createdAt: row.created_at };
  if (row.error_code !== null) job.error = { code: row.error_code, message: row.error_message ?? '' };
  return job;
}

function toGeneration(row: GenerationRow): StoredGeneration {
  const rec: StoredGeneration = {
    id: row.id,
    jobId: row.job_id,
    modelId: row.model_id,
    modelName: row.model_name,
    prompt: row.prompt,
    negativePrompt: row.negative_prompt,
    seed: row.seed,
    steps: row.steps,
    guidance: row.guidance,
    width: row.width,
    height: row.height,
    image: row.image,
    durationMs: row.duration_ms,
    createdAt: row.created_at,
    favorite: row.favorite === 1,
  };
  if (row.grid_row !== null && row.grid_column !== null) rec.grid = { row: row.grid_row, column: row.grid_column };
  return rec;
}

/** Escapes LIKE wildcards for `ESCAPE '\'`. */
function escapeLike(text: string): string {
  return text.replace(/[\\%_]/g, (c) => `\\${c}`);
}

function requireText(file: string, what: string, value: unknown): void {
  if (typeof value !== 'string' || value === '') throw new StoreError('invalid', file, `${what} must be a non-empty string.`);
}

function requirePositiveInt(file: string, what: string, value: unknown): void {
  if (!Number.isSafeInteger(value) || (value as number) <= 0) throw new StoreError('invalid', file, `${what} must be a positive integer, not ${String(value)}.`);
}

function requireNonNegativeInt(file: string, what: string, value: unknown): void {
  if (!Number.isSafeInteger(value) || (value as number) < 0) throw new StoreError('invalid', file, `${what} must be an integer >= 0, not ${String(value)}.`);
}

function corrupt(file: string, detail: string, cause?: unknown): StoreError {
  const base = path.basename(file);
  return new StoreError(
    'corrupt',
    file,
    `The history database ${file} is not a SQLite database or is damaged (${detail}). Lethe has not changed it. ` +
      `Quit Lethe and move the file aside (for example rename it to ${base}.broken, together with any ${base}-wal and ${base}-shm ` +
      `files beside it); on the next start history is rebuilt empty. Model files and image files on disk are not affected.`,
    cause === undefined ? undefined : { cause },
  );
}

function cannotOpen(file: string, cause: unknown): StoreError {
  const detail = cause instanceof Error ? cause.message : String(cause);
  return new StoreError(
    'cannot-open',
    file,
    `Cannot open the history database ${file} (${detail}). Check that its folder exists and is writable, ` +
      `that no other program holds it locked, and that it is a file, not a folder.`,
    { cause },
  );
}

/** Maps what opening or checking threw onto a StoreError; StoreErrors pass through. */
function toOpenError(file: string, err: unknown): unknown {
  if (err instanceof StoreError) return err;
  if (err instanceof Database.SqliteError) {
    if (err.code === 'SQLITE_NOTADB' || err.code.startsWith('SQLITE_CORRUPT')) return corrupt(file, err.message, err);
    return cannotOpen(file, err);
  }
  if (err instanceof TypeError && /directory does not exist/i.test(err.message)) return cannotOpen(file, err);
  return err;
}

/**
 * Refuses a non-empty file that does not start with the SQLite header before
 * SQLite opens it. A missing or empty file is a new database.
 */
function checkHeader(file: string): void {
  let size: number;
  try {
    const stat = statSync(file);
    if (stat.isDirectory()) throw cannotOpen(file, new Error('it is a folder'));
    size = stat.size;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
    throw err instanceof StoreError ? err : cannotOpen(file, err);
  }
  if (size === 0) return;
  const header = Buffer.alloc(SQLITE_HEADER.length);
  let read = 0;
  try {
    const fd = openSync(file, 'r');
    try {
      read = readSync(fd, header, 0, header.length, 0);
    } finally {
      closeSync(fd);
    }
  } catch (err) {
    throw cannotOpen(file, err);
  }
  if (read < header.length || size < 512 || !header.equals(SQLITE_HEADER)) {
    throw corrupt(file, size < 512 ? `only ${size} bytes long` : 'no SQLite header');
  }
}
