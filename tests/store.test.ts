import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import Database from 'better-sqlite3';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { HistoryStore, StoreError, type NewGeneration } from '../core/store/history.ts';
import { LATEST_VERSION, MIGRATIONS, migrate } from '../core/store/migrations.ts';

const REPO_ROOT = fileURLToPath(new URL('..', import.meta.url));
const HISTORY_MODULE = new URL('../core/store/history.ts', import.meta.url).href;

let tmp: string;
let dbFile: string;
const children: ChildProcess[] = [];

beforeEach(() => {
  tmp = mkdtempSync(path.join(tmpdir(), 'lethe-store-'));
  dbFile = path.join(tmp, 'history.db');
});

afterEach(() => {
  for (const child of children.splice(0)) {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
  rmSync(tmp, { recursive: true, force: true });
});

/** A clock that advances one second per reading, from a fixed start. */
function steppingClock(start = Date.UTC(2025, 0, 1)): () => Date {
  let t = start;
  return () => new Date((t += 1000));
}

/** sqlite_master as (type, name, table, sql), sorted: the whole schema of a file. */
function schemaOf(file: string): Array<{ type: string; name: string; tbl_name: string; sql: string | null }> {
  const db = new Database(file, { readonly: true });
  try {
    return db
      .prepare('SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY type, name')
      .all() as Array<{ type: string; name: string; tbl_name: string; sql: string | null }>;
  } finally {
    db.close();
  }
}

function rawPragma(file: string, pragma: string): unknown {
  const db = new Database(file, { readonly: true });
  try {
    return db.pragma(pragma, { simple: true });
  } finally {
    db.close();
  }
}

function columnsOf(file: string, table: string): string[] {
  const db = new Database(file, { readonly: true });
  try {
    return (db.pragma(`table_info(${table})`) as Array<{ name: string }>).map((c) => c.name);
  } finally {
    db.close();
  }
}

/** Expected columns of the latest schema, written out by hand from the spec. */
const EXPECTED_COLUMNS: Record<string, string[]> = {
  models: ['id', 'name', 'path', 'layout', 'built_in', 'default_size', 'size_step', 'added_at'],
  jobs: ['id', 'kind', 'state', 'done', 'total', 'params_json', 'error_code', 'error_message', 'created_at', 'started_at', 'finished_at'],
  generations: [
    'id', 'job_id', 'model_id', 'model_name', 'prompt', 'negative_prompt', 'seed', 'steps', 'guidance', 'width', 'height',
    'image', 'duration_ms', 'created_at', 'grid_row', 'grid_column', 'favorite',
  ],
  runs: [
    'id', 'model_id', 'method', 'concepts_json', 'preserve_vocabulary', 'settings_json', 'state', 'step', 'total_steps',
    'losses_json', 'adversarial_concepts_json', 'output_path', 'created_at', 'started_at', 'finished_at', 'error_code',
    'error_message',
  ],
};

function generation(overrides: Partial<NewGeneration> & { id: string }): NewGeneration {
  return {
    jobId: 'job-1',
    modelId: 'sd15',
    modelName: 'Stable Diffusion 1.5',
    prompt: 'a photo of a dog',
    negativePrompt: '',
    seed: 1,
    steps: 20,
    guidance: 7.5,
    width: 512,
    height: 512,
    image: `${overrides.id}.png`,
    durationMs: 1500,
    createdAt: '2025-01-01T00:00:00.000Z',
    ...overrides,
  };
}

function expectStoreError(fn: () => unknown, reason: StoreError['reason'], message?: RegExp): StoreError {
  let caught: unknown;
  try {
    fn();
  } catch (err) {
    caught = err;
  }
  expect(caught).toBeInstanceOf(StoreError);
  const err = caught as StoreError;
  expect(err.code).toBe('store');
  expect(err.reason).toBe(reason);
  if (message) expect(err.message).toMatch(message);
  return err;
}

// --- schema and migrations ------------------------------------------------------------

describe('schema and migrations', () => {
  it('a fresh database is at the latest version, in WAL mode, with the specified tables and columns', () => {
    const store = HistoryStore.open(dbFile);
    expect(store.schemaVersion).toBe(MIGRATIONS.length);
    expect(LATEST_VERSION).toBeGreaterThanOrEqual(2);
    expect(store.journalMode).toBe('wal');
    expect(store.integrityCheck()).toBe('ok');
    store.close();

    expect(rawPragma(dbFile, 'journal_mode')).toBe('wal'); // persisted in the file
    expect(rawPragma(dbFile, 'user_version')).toBe(LATEST_VERSION);
    const tables = schemaOf(dbFile)
      .filter((o) => o.type === 'table')
      .map((o) => o.name)
      .sort();
    expect(tables).toEqual(['generations', 'jobs', 'models', 'runs']);
    for (const [table, columns] of Object.entries(EXPECTED_COLUMNS)) expect(columnsOf(dbFile, table)).toEqual(columns);
    const indexes = schemaOf(dbFile).filter((o) => o.type === 'index').map((o) => o.name);
    expect(indexes).toContain('generations_created_at');
  });

  it('opening a missing file in a missing folder creates both', () => {
    const nested = path.join(tmp, 'a', 'b', 'history.db');
    const store = HistoryStore.open(nested);
    expect(store.file).toBe(nested);
    store.close();
    expect(existsSync(nested)).toBe(true);
  });

  it('reopening a latest database changes nothing', () => {
    HistoryStore.open(dbFile).close();
    const before = schemaOf(dbFile);
    HistoryStore.open(dbFile).close();
    expect(schemaOf(dbFile)).toEqual(before);
  });

  it('migrating from every older version gives the schema of a fresh database', () => {
    const fresh = path.join(tmp, 'fresh.db');
    HistoryStore.open(fresh).close();
    const expected = schemaOf(fresh);

    for (let version = 0; version < LATEST_VERSION; version++) {
      const file = path.join(tmp, `from-v${version}.db`);
      if (version === 0) {
        writeFileSync(file, ''); // an empty file is a version-0 SQLite database
      } else {
        const raw = new Database(file);
        migrate(raw, { to: version });
        expect(raw.pragma('user_version', { simple: true })).toBe(version);
        raw.close();
      }
      const store = HistoryStore.open(file);
      expect(store.schemaVersion).toBe(LATEST_VERSION);
      expect(store.integrityCheck()).toBe('ok');
      store.close();
      expect(schemaOf(file), `schema after migrating from version ${version}`).toEqual(expected);
    }
  });

  it('data written at version 1 survives the migration to the latest version', () => {
    const raw = new Database(dbFile);
    migrate(raw, { to: 1 });
    // Written with plain SQL against the version-1 schema, as a version-1 app would have.
    raw.prepare(
      `INSERT INTO models (id, name, path, layout, built_in, default_size, size_step, added_at)
       VALUES ('m1', 'Old model', '/models/old', 'diffusers', 1, 512, 8, '2024-05-01T00:00:00.000Z')`,
    ).run();
    raw.prepare(
      `INSERT INTO jobs (id, kind, state, done, total, params_json, error_code, error_message, created_at, started_at, finished_at)
       VALUES ('j1', 'ab-grid', 'failed', 1, 4, '{"prompts":["x"]}', 'non-finite', 'NaN at step 3', '2024-05-01T00:00:01.000Z',
               '2024-05-01T00:00:02.000Z', '2024-05-01T00:00:03.000Z')`,
    ).run();
    raw.prepare(
      `INSERT INTO generations (id, job_id, model_id, model_name, prompt, negative_prompt, seed, steps, guidance, width, height,
                                image, duration_ms, created_at, grid_row, grid_column)
       VALUES ('g1', 'j1', 'm1', 'Old model', 'a castle', 'blurry', 123456789012, 30, 6.5, 640, 384, 'g1.png', 2345.5,
               '2024-05-01T00:00:02.500Z', 1, 0)`,
    ).run();
    raw.prepare(
      `INSERT INTO runs (id, model_id, method, concepts_json, settings_json, state, total_steps, created_at)
       VALUES ('r1', 'm1', 'esd', '["van gogh"]', '{}', 'done', 1000, '2024-05-01T00:00:04.000Z')`,
    ).run();
    raw.close();

    const store = HistoryStore.open(dbFile);
    expect(store.schemaVersion).toBe(LATEST_VERSION);
    expect(store.getModel('m1')).toEqual({
      id: 'm1', name: 'Old model', path: '/models/old', layout: 'diffusers', builtIn: true, defaultSize: 512, sizeStep: 8,
      addedAt: '2024-05-01T00:00:00.000Z',
    });
    expect(store.getJobRecord('j1')).toEqual({
      id: 'j1', kind: 'ab-grid', state: 'failed', done: 1, total: 4, createdAt: '2024-05-01T00:00:01.000Z',
      error: { code: 'non-finite', message: 'NaN at step 3' }, params: { prompts: ['x'] },
      startedAt: '2024-05-01T00:00:02.000Z', finishedAt: '2024-05-01T00:00:03.000Z',
    });
    expect(store.getGeneration('g1')).toEqual({
      id: 'g1', jobId: 'j1', modelId: 'm1', modelName: 'Old model', prompt: 'a castle', negativePrompt: 'blurry',
      seed: 123456789012, steps: 30, guidance: 6.5, width: 640, height: 384, image: 'g1.png', durationMs: 2345.5,
      createdAt: '2024-05-01T00:00:02.500Z', grid: { row: 1, column: 0 }, favorite: false,
    });
    expect(store.setFavorite('g1', true)).toBe(true);
    expect(store.getGeneration('g1')?.favorite).toBe(true);
    store.close();
    const db = new Database(dbFile, { readonly: true });
    expect(db.prepare('SELECT id, method, total_steps FROM runs').all()).toEqual([{ id: 'r1', method: 'esd', total_steps: 1000 }]);
    db.close();
  });

  it('a failing migration rolls back whole: version and schema unchanged', () => {
    HistoryStore.open(dbFile).close();
    const before = schemaOf(dbFile);
    const raw = new Database(dbFile);
    const failing = (db: Database.Database): void => {
      db.exec('CREATE TABLE half_done (x INTEGER)');
      throw new Error('boom');
    };
    expect(() => migrate(raw, { migrations: [...MIGRATIONS, failing] })).toThrow('boom');
    expect(raw.pragma('user_version', { simple: true })).toBe(LATEST_VERSION);
    raw.close();
    expect(schemaOf(dbFile)).toEqual(before);
  });

  it('refuses a database from a newer app version and leaves it unmodified', () => {
    const raw = new Database(dbFile);
    raw.exec("CREATE TABLE future_things (x TEXT); INSERT INTO future_things VALUES ('keep me');");
    raw.pragma(`user_version = ${LATEST_VERSION + 1}`);
    raw.close();
    const bytes = readFileSync(dbFile);

    const err = expectStoreError(() => HistoryStore.open(dbFile), 'newer-version', /newer version of Lethe/);
    expect(err.message).toContain(`schema version ${LATEST_VERSION + 1}`);
    expect(err.message).toMatch(/not been changed/);
    expect(err.message).toMatch(/Update Lethe/);
    expect(readFileSync(dbFile).equals(bytes)).toBe(true);
    expect(existsSync(`${dbFile}-wal`)).toBe(false);
    expect(rawPragma(dbFile, 'journal_mode')).toBe('delete');
  });
});

// --- refusing broken files ---------------------------------------------------------------

describe('refusing files that are not a sound SQLite database', () => {
  function expectRefusedUnchanged(file: string): StoreError {
    const bytes = readFileSync(file);
    const err = expectStoreError(() => HistoryStore.open(file), 'corrupt', /move the file aside/);
    expect(err.message).toMatch(/rebuilt empty/);
    expect(err.message).toContain(file);
    expect(readFileSync(file).equals(bytes)).toBe(true);
    expect(existsSync(`${file}-wal`)).toBe(false);
    expect(existsSync(`${file}-shm`)).toBe(false);
    return err;
  }

  it('random bytes', () => {
    writeFileSync(dbFile, randomBytes(16384));
    expectRefusedUnchanged(dbFile);
  });

  it('a short text file', () => {
    writeFileSync(dbFile, 'hello, not a database\n');
    expectRefusedUnchanged(dbFile);
  });

  it('a SQLite header followed by garbage', () => {
    writeFileSync(dbFile, Buffer.concat([Buffer.from('SQLite format 3\0', 'latin1'), randomBytes(8192 - 16)]));
    expectRefusedUnchanged(dbFile);
  });

  /** A real history database of about 100 pages of 4 KiB, WAL checkpointed into the file. */
  function writeRealDatabase(): number {
    const store = HistoryStore.open(dbFile);
    store.createJob({ id: 'job-1', kind: 'generate', total: 1, params: {} });
    store.transaction(() => {
      for (let i = 0; i < 3000; i++) store.insertGeneration(generation({ id: `g${i}`, prompt: `prompt ${i} `.repeat(10) }));
    });
    store.close(); // checkpoints the WAL into the file
    expect(existsSync(`${dbFile}-wal`)).toBe(false);
    const size = readFileSync(dbFile).length;
    expect(size).toBeGreaterThan(60 * 4096);
    return size;
  }

  it('a real database cut short', () => {
    const size = writeRealDatabase();
    truncateSync(dbFile, Math.floor(size / 2 / 4096) * 4096);
    expectRefusedUnchanged(dbFile);
  });

  it('a real database with one page overwritten (header and schema intact: only the check at open sees it)', () => {
    writeRealDatabase();
    const bytes = readFileSync(dbFile);
    randomBytes(4096).copy(bytes, 40 * 4096);
    writeFileSync(dbFile, bytes);
    expect(rawPragma(dbFile, 'user_version')).toBe(LATEST_VERSION); // SQLite alone would open it
    expectRefusedUnchanged(dbFile);
  });

  it('a folder where the file should be', () => {
    mkdirSync(dbFile);
    expectStoreError(() => HistoryStore.open(dbFile), 'cannot-open', /is a folder|not a folder/);
  });
});

// --- CRUD -------------------------------------------------------------------------------

describe('models', () => {
  it('add, get, list, find by path, remove', () => {
    const store = HistoryStore.open(dbFile, { now: steppingClock() });
    const added = store.addModel({
      id: 'custom', name: 'My model', path: '/m/custom.safetensors', layout: 'single-file', builtIn: false, defaultSize: 768,
      sizeStep: 64,
    });
    expect(added).toEqual({
      id: 'custom', name: 'My model', path: '/m/custom.safetensors', layout: 'single-file', builtIn: false, defaultSize: 768,
      sizeStep: 64, addedAt: '2025-01-01T00:00:01.000Z',
    });
    const builtIn = store.addModel({
      id: 'sd15', name: 'SD 1.5', path: '/app/models/sd15', layout: 'diffusers', builtIn: true, defaultSize: 512, sizeStep: 8,
      addedAt: '2020-01-01T00:00:00.000Z',
    });
    expect(builtIn.addedAt).toBe('2020-01-01T00:00:00.000Z');
    expect(store.getModel('custom')).toEqual(added);
    expect(store.getModel('nope')).toBeUndefined();
    expect(store.listModels().map((m) => m.id)).toEqual(['sd15', 'custom']); // built-in first
    expect(store.findModelByPath('/app/models/sd15')).toEqual(builtIn);
    expect(store.findModelByPath('/app/models')).toBeUndefined();

    expectStoreError(() => store.addModel({ ...builtIn, path: '/elsewhere' }), 'conflict', /sd15/);
    expectStoreError(() => store.addModel({ ...builtIn, id: 'other' }), 'conflict', /already in the library/);
    expectStoreError(() => store.addModel({ ...builtIn, id: 'bad', path: '/x', defaultSize: 0 }), 'invalid');

    expect(store.removeModel('custom')).toBe(true);
    expect(store.removeModel('custom')).toBe(false);
    expect(store.listModels().map((m) => m.id)).toEqual(['sd15']);
    store.close();
  });

  it('removing a model keeps its generations and their model name', () => {
    const store = HistoryStore.open(dbFile);
    store.addModel({ id: 'x', name: 'Model X', path: '/m/x', layout: 'diffusers', builtIn: false, defaultSize: 512, sizeStep: 8 });
    store.createJob({ id: 'job-1', kind: 'generate', total: 1, params: {} });
    store.insertGeneration(generation({ id: 'g1', modelId: 'x', modelName: 'Model X' }));
    expect(store.removeModel('x')).toBe(true);
    expect(store.getGeneration('g1')).toMatchObject({ modelId: 'x', modelName: 'Model X' });
    expect(store.searchGenerations({ query: 'model x' }).total).toBe(1);
    store.close();
  });
});

describe('jobs', () => {
  it('queued -> running -> done, with progress', () => {
    const store = HistoryStore.open(dbFile, { now: steppingClock() });
    const created = store.createJob({ id: 'j1', kind: 'generate', total: 3, params: { prompt: 'a cat', seeds: [1, 2, 3] } });
    expect(created).toEqual({ id: 'j1', kind: 'generate', state: 'queued', done: 0, total: 3, createdAt: '2025-01-01T00:00:01.000Z' });
    expect(store.startJob('j1')).toMatchObject({ state: 'running', done: 0 });
    store.updateJobProgress('j1', 2);
    expect(store.getJob('j1')?.done).toBe(2);
    expectStoreError(() => store.updateJobProgress('j1', 4), 'invalid', /past its end/);
    expect(store.getJob('j1')?.done).toBe(2);
    store.updateJobProgress('j1', 3);
    expect(store.finishJob('j1', 'done')).toEqual({
      id: 'j1', kind: 'generate', state: 'done', done: 3, total: 3, createdAt: '2025-01-01T00:00:01.000Z',
    });
    expect(store.getJobRecord('j1')).toEqual({
      id: 'j1', kind: 'generate', state: 'done', done: 3, total: 3, createdAt: '2025-01-01T00:00:01.000Z',
      params: { prompt: 'a cat', seeds: [1, 2, 3] }, startedAt: '2025-01-01T00:00:02.000Z', finishedAt: '2025-01-01T00:00:03.000Z',
    });
    store.close();
  });

  it('failed jobs keep their error; invalid transitions and unknown ids are refused', () => {
    const store = HistoryStore.open(dbFile);
    store.createJob({ id: 'j1', kind: 'ab-grid', total: 4, params: null });
    store.startJob('j1');
    const failed = store.finishJob('j1', 'failed', { code: 'non-finite', message: 'The loss became NaN; lower the guidance.' });
    expect(failed.state).toBe('failed');
    expect(failed.error).toEqual({ code: 'non-finite', message: 'The loss became NaN; lower the guidance.' });
    expectStoreError(() => store.finishJob('j1', 'done'), 'invalid', /it is failed/);
    expectStoreError(() => store.startJob('j1'), 'invalid', /only a queued job/);
    expectStoreError(() => store.updateJobProgress('j1', 1), 'invalid');
    expectStoreError(() => store.startJob('missing'), 'not-found');
    expectStoreError(() => store.updateJobProgress('missing', 0), 'not-found');
    expectStoreError(() => store.finishJob('missing', 'cancelled'), 'not-found');
    expectStoreError(() => store.createJob({ id: 'j1', kind: 'generate', total: 1, params: {} }), 'conflict');
    expect(store.getJob('missing')).toBeUndefined();

    // A queued job can be cancelled before it starts; no error attached.
    store.createJob({ id: 'j2', kind: 'generate', total: 1, params: {} });
    const cancelled = store.finishJob('j2', 'cancelled');
    expect(cancelled.state).toBe('cancelled');
    expect(cancelled).not.toHaveProperty('error');
    store.close();
  });

  it('listJobs: newest first, filtered by state, limited', () => {
    const store = HistoryStore.open(dbFile, { now: steppingClock() });
    for (const id of ['a', 'b', 'c', 'd', 'e']) store.createJob({ id, kind: 'generate', total: 1, params: {} });
    store.startJob('b');
    store.startJob('d');
    store.finishJob('d', 'done');
    expect(store.listJobs().map((j) => j.id)).toEqual(['e', 'd', 'c', 'b', 'a']);
    expect(store.listJobs({ limit: 2 }).map((j) => j.id)).toEqual(['e', 'd']);
    expect(store.listJobs({ states: ['queued'] }).map((j) => j.id)).toEqual(['e', 'c', 'a']);
    expect(store.listJobs({ states: ['running', 'done'] }).map((j) => j.id)).toEqual(['d', 'b']);
    expect(store.listJobs({ states: ['queued'], limit: 1 }).map((j) => j.id)).toEqual(['e']);
    expect(store.listJobs({ states: [] })).toEqual([]);
    store.close();
  });

  it('store.transaction rolls back every write when it throws', () => {
    const store = HistoryStore.open(dbFile);
    expect(() =>
      store.transaction(() => {
        store.createJob({ id: 'j1', kind: 'generate', total: 1, params: {} });
        store.insertGeneration(generation({ id: 'g1', jobId: 'j1' }));
        throw new Error('disk full');
      }),
    ).toThrow('disk full');
    expect(store.getJob('j1')).toBeUndefined();
    expect(store.getGeneration('g1')).toBeUndefined();
    store.close();
  });
});

describe('generations', () => {
  it('round trip with and without a grid position', () => {
    const store = HistoryStore.open(dbFile);
    store.createJob({ id: 'job-1', kind: 'ab-grid', total: 2, params: {} });
    const plain = generation({ id: 'g1', seed: 2 ** 32 - 1, guidance: 7, negativePrompt: 'blurry, low quality' });
    const inGrid = generation({ id: 'g2', grid: { row: 3, column: 1 }, durationMs: 987.25 });
    expect(store.insertGeneration(plain)).toEqual({ ...plain, favorite: false });
    expect(store.insertGeneration(inGrid)).toEqual({ ...inGrid, favorite: false });
    expect(store.getGeneration('g1')).not.toHaveProperty('grid');
    expect(store.getGeneration('g2')?.grid).toEqual({ row: 3, column: 1 });
    expect(store.getGeneration('nope')).toBeUndefined();
    expect(store.setFavorite('g2', true)).toBe(true);
    expect(store.setFavorite('nope', true)).toBe(false);
    expect(store.getGeneration('g2')?.favorite).toBe(true);
    store.close();
  });

  it('refuses a generation for an unknown job (foreign keys on), a duplicate id, and malformed values', () => {
    const store = HistoryStore.open(dbFile);
    expectStoreError(() => store.insertGeneration(generation({ id: 'g1', jobId: 'ghost' })), 'not-found', /ghost/);
    store.createJob({ id: 'job-1', kind: 'generate', total: 1, params: {} });
    store.insertGeneration(generation({ id: 'g1' }));
    expectStoreError(() => store.insertGeneration(generation({ id: 'g1' })), 'conflict');
    expectStoreError(() => store.insertGeneration(generation({ id: 'g2', seed: 1.5 })), 'invalid');
    expectStoreError(() => store.insertGeneration(generation({ id: 'g2', width: 0 })), 'invalid');
    expectStoreError(() => store.insertGeneration(generation({ id: 'g2', guidance: Number.NaN })), 'invalid');
    expect(store.searchGenerations().total).toBe(1);
    store.close();
  });

  it('jobDone records the image and the progress in one transaction', () => {
    const store = HistoryStore.open(dbFile);
    store.createJob({ id: 'job-1', kind: 'generate', total: 2, params: {} });
    store.startJob('job-1');
    store.insertGeneration(generation({ id: 'g1' }), { jobDone: 1 });
    expect(store.getJob('job-1')?.done).toBe(1);
    // Progress past the end fails, and takes the image with it.
    expectStoreError(() => store.insertGeneration(generation({ id: 'g2' }), { jobDone: 5 }), 'invalid');
    expect(store.getGeneration('g2')).toBeUndefined();
    expect(store.getJob('job-1')?.done).toBe(1);
    store.close();
  });
});

// --- search -------------------------------------------------------------------------------

describe('searchGenerations', () => {
  interface Fixture {
    id: string;
    prompt: string;
    negativePrompt: string;
    modelName: string;
    seed: number;
  }
  const FIXTURES: Fixture[] = [
    { id: 'f00', prompt: 'a black cat on a sofa', negativePrompt: '', modelName: 'SD 1.5', seed: 42 },
    { id: 'f01', prompt: 'THE CATHEDRAL at dusk', negativePrompt: 'people', modelName: 'SD 1.5', seed: 420 },
    { id: 'f02', prompt: 'a dog in the snow', negativePrompt: 'no cats', modelName: 'SD 1.5', seed: 7 },
    { id: 'f03', prompt: 'portrait of an astronaut', negativePrompt: '', modelName: 'Catalyst v1', seed: 8 },
    { id: 'f04', prompt: '100% cotton shirt', negativePrompt: '', modelName: 'SD 1.5', seed: 9 },
    { id: 'f05', prompt: '100 cotton shirts', negativePrompt: '', modelName: 'SD 1.5', seed: 10 },
    { id: 'f06', prompt: 'file_name style', negativePrompt: '', modelName: 'SD 1.5', seed: 11 },
    { id: 'f07', prompt: 'fileXname style', negativePrompt: '', modelName: 'SD 1.5', seed: 12 },
    { id: 'f08', prompt: 'room 42b', negativePrompt: '', modelName: 'SD 1.5', seed: 13 },
    { id: 'f09', prompt: 'windows path C:\\images\\cat', negativePrompt: '', modelName: 'SD 1.5', seed: 14 },
    { id: 'f10', prompt: 'abc', negativePrompt: 'a_c', modelName: 'SD 1.5', seed: -42 },
    { id: 'f11', prompt: 'café au lait', negativePrompt: '', modelName: 'SD 1.5', seed: 4242 },
  ];
  for (let i = 12; i < 40; i++) {
    FIXTURES.push({ id: `f${i}`, prompt: `landscape number ${i}`, negativePrompt: '', modelName: i % 2 ? 'Erased: van gogh' : 'SD 1.5', seed: 1000 + i });
  }
  // Each fixture gets its own second, in insertion order, except f20/f21 which share one (ties: later insert first).
  const createdAt = (i: number): string => new Date(Date.UTC(2025, 5, 1) + (i === 21 ? 20 : i) * 1000).toISOString();

  /** The expected matches, by an independent rule: JS substring (ASCII case-fold) or exact seed. */
  function expected(query: string): string[] {
    const q = query.trim();
    const fold = (s: string): string => s.replace(/[A-Z]/g, (c) => c.toLowerCase());
    const matches = FIXTURES.filter(
      (f) =>
        q === '' ||
        [f.prompt, f.negativePrompt, f.modelName].some((s) => fold(s).includes(fold(q))) ||
        (/^-?\d+$/.test(q) && f.seed === Number(q)),
    );
    // Newest first: by created time descending, ties by insertion order descending.
    return matches
      .map((f) => ({ id: f.id, index: FIXTURES.indexOf(f) }))
      .sort((a, b) => createdAt(b.index).localeCompare(createdAt(a.index)) || b.index - a.index)
      .map((m) => m.id);
  }

  let store: HistoryStore;
  beforeEach(() => {
    store = HistoryStore.open(dbFile);
    store.createJob({ id: 'job-1', kind: 'generate', total: FIXTURES.length, params: {} });
    FIXTURES.forEach((f, i) => store.insertGeneration(generation({ ...f, createdAt: createdAt(i) })));
  });
  afterEach(() => store.close());

  const ids = (r: { items: Array<{ id: string }> }): string[] => r.items.map((g) => g.id);

  it.each([
    ['cat', ['f09', 'f03', 'f02', 'f01', 'f00']],
    ['CAT', ['f09', 'f03', 'f02', 'f01', 'f00']],
    ['42', ['f08', 'f00']],
    ['-42', ['f10']],
    ['420', ['f01']],
    ['100%', ['f04']],
    ['%', ['f04']],
    ['_', ['f10', 'f06']],
    ['a_c', ['f10']],
    ['file_name', ['f06']],
    ['C:\\images', ['f09']],
    ['\\', ['f09']],
    ['café', ['f11']],
    ['van gogh', FIXTURES.filter((f) => f.modelName.includes('van gogh')).map((f) => f.id).reverse()],
    ['nothing matches this', []],
  ])('query %j', (query, want) => {
    expect(expected(query)).toEqual(want); // the hand-written answer agrees with the reference rule
    const result = store.searchGenerations({ query, limit: 500 });
    expect(ids(result)).toEqual(want);
    expect(result.total).toBe(want.length);
  });

  it('no query (or blank) lists everything, newest first, ties by insertion', () => {
    const all = expected('');
    expect(all.slice(0, 3)).toEqual(['f39', 'f38', 'f37']);
    expect(all.indexOf('f21')).toBeLessThan(all.indexOf('f20'));
    expect(ids(store.searchGenerations({ limit: 500 }))).toEqual(all);
    expect(ids(store.searchGenerations({ query: '   ', limit: 500 }))).toEqual(all);
    expect(store.searchGenerations().items).toHaveLength(Math.min(50, FIXTURES.length));
  });

  it('pages cover the result exactly once, with a constant total', () => {
    const all = expected('');
    const pages: string[] = [];
    for (let offset = 0; offset < all.length + 7; offset += 7) {
      const page = store.searchGenerations({ limit: 7, offset });
      expect(page.total).toBe(FIXTURES.length);
      expect(page.items.length).toBe(Math.max(0, Math.min(7, all.length - offset)));
      pages.push(...ids(page));
    }
    expect(pages).toEqual(all);

    const landscapes = expected('landscape');
    const second = store.searchGenerations({ query: 'landscape', limit: 5, offset: 5 });
    expect(ids(second)).toEqual(landscapes.slice(5, 10));
    expect(second.total).toBe(28);
    expect(store.searchGenerations({ query: 'landscape', limit: 0 })).toEqual({ items: [], total: 28 });
  });

  it('favourites filter; bad limit or offset refused; large limit capped', () => {
    store.setFavorite('f04', true);
    store.setFavorite('f30', true);
    expect(ids(store.searchGenerations({ favorite: true }))).toEqual(['f30', 'f04']);
    expect(ids(store.searchGenerations({ query: 'cotton', favorite: true }))).toEqual(['f04']);
    expect(store.searchGenerations({ favorite: false }).total).toBe(FIXTURES.length - 2);
    expectStoreError(() => store.searchGenerations({ limit: -1 }), 'invalid');
    expectStoreError(() => store.searchGenerations({ offset: 1.5 }), 'invalid');
    expect(store.searchGenerations({ limit: 10_000 }).items).toHaveLength(FIXTURES.length);
  });
});

// --- crashes --------------------------------------------------------------------------------

/** Runs a script in a child `node` that imports HistoryStore (through tsx) as `HistoryStore`. */
function spawnStoreScript(body: string): { child: ChildProcess; lines: string[]; waitFor: (pred: (lines: string[]) => boolean) => Promise<void> } {
  const script = `const { HistoryStore } = await import(process.env.HISTORY_MODULE);
const fs = await import('node:fs');
const say = (line) => fs.writeSync(1, line + '\\n');
${body}`;
  const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], {
    cwd: REPO_ROOT,
    env: { ...process.env, HISTORY_MODULE, LETHE_DB: dbFile },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  children.push(child);
  const lines: string[] = [];
  let stderr = '';
  let buffered = '';
  const waiters: Array<() => void> = [];
  child.stdout!.on('data', (chunk: Buffer) => {
    buffered += chunk.toString();
    const parts = buffered.split('\n');
    buffered = parts.pop()!;
    lines.push(...parts);
    for (const w of waiters) w();
  });
  child.stderr!.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const waitFor = (pred: (lines: string[]) => boolean): Promise<void> =>
    new Promise((resolve, reject) => {
      const check = (): void => {
        if (pred(lines)) resolve();
      };
      waiters.push(check);
      child.on('exit', (code, signal) => reject(new Error(`child exited (${code ?? signal}) early: ${stderr}`)));
      check();
    });
  return { child, lines, waitFor };
}

function kill(child: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    child.once('exit', () => resolve());
    child.kill('SIGKILL');
  });
}

describe('crash recovery', () => {
  it('markInterruptedJobs turns jobs left queued or running into interrupted, and touches nothing else', () => {
    let store = HistoryStore.open(dbFile, { now: steppingClock() });
    store.createJob({ id: 'done-1', kind: 'generate', total: 1, params: {} });
    store.startJob('done-1');
    store.insertGeneration(generation({ id: 'g1', jobId: 'done-1' }), { jobDone: 1 });
    store.finishJob('done-1', 'done');
    store.createJob({ id: 'failed-1', kind: 'generate', total: 2, params: {} });
    store.finishJob('failed-1', 'failed', { code: 'x', message: 'y' });
    store.createJob({ id: 'cancelled-1', kind: 'ab-grid', total: 2, params: {} });
    store.finishJob('cancelled-1', 'cancelled');
    store.createJob({ id: 'running-1', kind: 'generate', total: 3, params: {} });
    store.startJob('running-1');
    store.insertGeneration(generation({ id: 'g2', jobId: 'running-1' }), { jobDone: 1 });
    store.createJob({ id: 'queued-1', kind: 'generate', total: 1, params: {} });
    const finishedBefore = ['done-1', 'failed-1', 'cancelled-1'].map((id) => store.getJobRecord(id));
    store.close(); // the app goes away without finishing its jobs

    store = HistoryStore.open(dbFile);
    expect(store.markInterruptedJobs()).toEqual(['running-1', 'queued-1']);
    expect(store.getJob('running-1')).toMatchObject({ state: 'interrupted', done: 1, total: 3 });
    expect(store.getJob('queued-1')).toMatchObject({ state: 'interrupted', done: 0 });
    expect(['done-1', 'failed-1', 'cancelled-1'].map((id) => store.getJobRecord(id))).toEqual(finishedBefore);
    expect(ids(store.searchGenerations())).toEqual(['g2', 'g1']);
    expect(store.markInterruptedJobs()).toEqual([]);
    expectStoreError(() => store.startJob('running-1'), 'invalid');
    store.close();

    function ids(r: { items: Array<{ id: string }> }): string[] {
      return r.items.map((g) => g.id);
    }
  });

  it('SIGKILL while a large transaction is open: committed rows survive, the open one vanishes', async () => {
    HistoryStore.open(dbFile).close();
    const { child, lines, waitFor } = spawnStoreScript(`
const store = HistoryStore.open(process.env.LETHE_DB);
const gen = (id, jobId, size = 100) => ({ id, jobId, modelId: 'm', modelName: 'M', prompt: 'p '.repeat(size) + id, negativePrompt: '',
  seed: 1, steps: 1, guidance: 1, width: 8, height: 8, image: id + '.png', durationMs: 1, createdAt: new Date().toISOString() });
for (let b = 0; b < 5; b++) {
  store.transaction(() => {
    store.createJob({ id: 'batch-' + b, kind: 'generate', total: 10, params: {} });
    store.startJob('batch-' + b);
    for (let i = 0; i < 10; i++) store.insertGeneration(gen('b' + b + '-' + i, 'batch-' + b), { jobDone: i + 1 });
    store.finishJob('batch-' + b, 'done');
  });
  say('committed ' + b);
}
store.createJob({ id: 'big', kind: 'generate', total: 100000, params: {} });
store.startJob('big');
say('big started');
store.transaction(() => {
  // ~24 MB: more than SQLite's page cache (16 MB in better-sqlite3), so uncommitted pages spill into the WAL.
  for (let i = 0; i < 12000; i++) store.insertGeneration(gen('big-' + i, 'big', 1000));
  say('open');
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0); // hold the transaction open forever
});
`);
    await waitFor((l) => l.includes('open'));
    expect(lines.filter((l) => l.startsWith('committed'))).toHaveLength(5);
    // Uncommitted pages of the open transaction have spilled into the WAL (the committed batches are far smaller).
    expect(statSync(`${dbFile}-wal`).size).toBeGreaterThan(1_000_000);
    await kill(child);

    const store = HistoryStore.open(dbFile);
    expect(store.integrityCheck()).toBe('ok');
    expect(store.searchGenerations({ query: 'big-', limit: 0 }).total).toBe(0);
    expect(store.searchGenerations({ limit: 0 }).total).toBe(50);
    for (let b = 0; b < 5; b++) expect(store.getJob(`batch-${b}`)).toMatchObject({ state: 'done', done: 10 });
    expect(store.markInterruptedJobs()).toEqual(['big']);
    store.close();
  });

  it('SIGKILL during a loop of writing transactions: integrity ok, every reported commit present, no half batch', async () => {
    HistoryStore.open(dbFile).close();
    const BATCH = 7;
    const { child, lines, waitFor } = spawnStoreScript(`
const store = HistoryStore.open(process.env.LETHE_DB);
const gen = (id, jobId) => ({ id, jobId, modelId: 'm', modelName: 'M', prompt: 'loop ' + id, negativePrompt: '',
  seed: 1, steps: 1, guidance: 1, width: 8, height: 8, image: id + '.png', durationMs: 1, createdAt: new Date().toISOString() });
for (let b = 0; ; b++) {
  store.transaction(() => {
    store.createJob({ id: 'loop-' + b, kind: 'generate', total: ${BATCH}, params: {} });
    store.startJob('loop-' + b);
    for (let i = 0; i < ${BATCH}; i++) store.insertGeneration(gen('l' + b + '-' + i, 'loop-' + b), { jobDone: i + 1 });
  });
  say('committed ' + b);
}
`);
    await waitFor((l) => l.length >= 200);
    await new Promise((r) => setTimeout(r, 20 + Math.random() * 30));
    await kill(child);
    const reported = lines.filter((l) => l.startsWith('committed')).length;

    const store = HistoryStore.open(dbFile);
    expect(store.integrityCheck()).toBe('ok');
    const jobs = store.listJobs();
    const rows = store.searchGenerations({ limit: 0 }).total;
    expect(jobs.length).toBeGreaterThanOrEqual(reported);
    expect(rows).toBe(jobs.length * BATCH); // each batch is all or nothing
    for (const job of jobs) expect(job).toMatchObject({ state: 'running', done: BATCH });
    for (let b = 0; b < reported; b++) expect(store.getGeneration(`l${b}-${BATCH - 1}`)).toBeDefined();
    expect(store.markInterruptedJobs()).toHaveLength(jobs.length);
    store.close();
  });

  it('waits for another process holding the write lock instead of failing (busy_timeout)', async () => {
    HistoryStore.open(dbFile).close();
    const { child, waitFor } = spawnStoreScript(`
const store = HistoryStore.open(process.env.LETHE_DB);
store.transaction(() => {
  store.createJob({ id: 'from-child', kind: 'generate', total: 1, params: {} });
  say('locked');
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 1500);
});
store.close();
say('released');
`);
    await waitFor((l) => l.includes('locked'));
    const store = HistoryStore.open(dbFile);
    const started = Date.now();
    store.createJob({ id: 'from-parent', kind: 'generate', total: 1, params: {} }); // blocks until the child commits
    expect(Date.now() - started).toBeGreaterThan(100);
    expect(store.listJobs().map((j) => j.id).sort()).toEqual(['from-child', 'from-parent']);
    store.close();
    await new Promise<void>((resolve) => (child.exitCode !== null ? resolve() : child.once('exit', () => resolve())));
    expect(child.exitCode).toBe(0);
  });
});
