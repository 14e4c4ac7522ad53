import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import path from 'node:path';

/** `../shared` beside the repository: fixtures, vocabularies, word lists. */
export const SHARED_DIR = path.resolve(fileURLToPath(new URL('../../../shared', import.meta.url)));
export const FIXTURES_DIR = path.join(SHARED_DIR, 'fixtures');
export const hasShared = existsSync(path.join(FIXTURES_DIR, 'sd1', 'index.json'));
