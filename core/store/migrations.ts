/**
 * Schema migrations of the history database, keyed by `PRAGMA user_version`.
 *
 * `MIGRATIONS[i]` takes a database from version `i` to version `i + 1`; a new
 * file (version 0) runs all of them. Each runs in its own IMMEDIATE
 * transaction together with the version bump, so a crash or an error leaves
 * the database at the previous version, unchanged. Never edit a migration
 * that has shipped: append a new one.
 */
import type BetterSqlite3 from 'better-sqlite3';

type Db = BetterSqlite3.Database;

export type Migration = (db: Db) => void;

/** Version 1: models, jobs, generations, and erasure runs. */
const v1: Migration = (db) => {
  db.exec(`
    CREATE TABLE models (
      id TEXT PRIMARY KEY NOT NULL,
      name TEXT NOT NULL,
      path TEXT NOT NULL UNIQUE,
      layout TEXT NOT NULL CHECK (layout IN ('diffusers', 'single-file')),
      built_in INTEGER NOT NULL DEFAULT 0 CHECK (built_in IN (0, 1)),
      default_size INTEGER NOT NULL CHECK (default_size > 0),
      size_step INTEGER NOT NULL CHECK (size_step > 0),
      added_at TEXT NOT NULL
    ) STRICT;

    CREATE TABLE jobs (
      id TEXT PRIMARY KEY NOT NULL,
      kind TEXT NOT NULL,
      state TEXT NOT NULL,
      done INTEGER NOT NULL DEFAULT 0 CHECK (done >= 0),
      total INTEGER NOT NULL CHECK (total >= 0),
      params_json TEXT NOT NULL,
      error_code TEXT,
      error_message TEXT,
      created_at TEXT NOT NULL,
      started_at TEXT,
      finished_at TEXT
    ) STRICT;
    CREATE INDEX jobs_state ON jobs (state);
    CREATE INDEX jobs_created_at ON jobs (created_at);

    -- model_id has no foreign key on purpose: removing a model keeps its images,
    -- and model_name keeps saying which model made them.
    CREATE TABLE generations (
      id TEXT PRIMARY KEY NOT NULL,
      job_id TEXT NOT NULL REFERENCES jobs (id),
      model_id TEXT NOT NULL,
      model_name TEXT NOT NULL,
      prompt TEXT NOT NULL,
      negative_prompt TEXT NOT NULL DEFAULT '',
      seed INTEGER NOT NULL,
      steps INTEGER NOT NULL,
      guidance REAL NOT NULL,
      width INTEGER NOT NULL,
      height INTEGER NOT NULL,
      image TEXT NOT NULL,
      duration_ms REAL NOT NULL,
      created_at TEXT NOT NULL,
      grid_row INTEGER,
      grid_column INTEGER,
      CHECK ((grid_row IS NULL) = (grid_column IS NULL))
    ) STRICT;
    CREATE INDEX generations_job_id ON generations (job_id);

    -- Erasure runs (ESD, UCE, EAP, DoCo, ...). Filled in by the erasure work;
    -- the columns are named now so that it needs no migration of its own.
    CREATE TABLE runs (
      id TEXT PRIMARY KEY NOT NULL,
      model_id TEXT NOT NULL,
      method TEXT NOT NULL,
      concepts_json TEXT NOT NULL,
      preserve_vocabulary TEXT,
      settings_json TEXT NOT NULL,
      state TEXT NOT NULL,
      step INTEGER NOT NULL DEFAULT 0,
      total_steps INTEGER NOT NULL,
      losses_json TEXT NOT NULL DEFAULT '[]',
      adversarial_concepts_json TEXT,
      output_path TEXT,
      created_at TEXT NOT NULL,
      started_at TEXT,
      finished_at TEXT,
      error_code TEXT,
      error_message TEXT
    ) STRICT;
    CREATE INDEX runs_created_at ON runs (created_at);
  `);
};

/** Version 2: favourites, and the newest-first history listing served by an index. */
const v2: Migration = (db) => {
  db.exec(`
    ALTER TABLE generations ADD COLUMN favorite INTEGER NOT NULL DEFAULT 0 CHECK (favorite IN (0, 1));
    CREATE INDEX generations_created_at ON generations (created_at);
  `);
};

/** In order: index i migrates version i to version i + 1. Append only. */
export const MIGRATIONS: readonly Migration[] = [v1, v2];

export const LATEST_VERSION = MIGRATIONS.length;

export function userVersion(db: Db): number {
  return db.pragma('user_version', { simple: true }) as number;
}

export interface MigrateResult {
  from: number;
  to: number;
}

/**
 * Brings `db` from its current version up to `to` (default: the latest), one
 * transaction per step. A database at or above `to` is left alone. A version
 * above the newest this code knows is an error here; `HistoryStore.open`
 * turns it into a message for the user before calling this.
 */
export function migrate(db: Db, options: { to?: number; migrations?: readonly Migration[] } = {}): MigrateResult {
  const migrations = options.migrations ?? MIGRATIONS;
  const to = options.to ?? migrations.length;
  if (!Number.isInteger(to) || to < 0 || to > migrations.length) {
    throw new RangeError(`migrate: target version ${to} is not between 0 and ${migrations.length}`);
  }
  const from = userVersion(db);
  if (from > migrations.length) {
    throw new RangeError(`migrate: database is at version ${from}, newer than the newest known (${migrations.length})`);
  }
  // Take the write lock only when there is something to do; re-read the
  // version under it, as another process may have migrated meanwhile.
  while (userVersion(db) < to) {
    const done = db
      .transaction(() => {
        const current = userVersion(db);
        if (current >= to) return true;
        migrations[current](db);
        db.pragma(`user_version = ${current + 1}`);
        return false;
      })
      .immediate();
    if (done) break;
  }
  return { from, to: Math.max(from, userVersion(db)) };
}
