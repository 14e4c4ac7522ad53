#!/usr/bin/env node
// better-sqlite3 is a native addon built for one runtime's ABI at a time: Node
// (tests, CLI, `npm run serve`) or Electron (`npm start`, packaging). Each entry
// point runs this first so the addon matches the runtime about to load it.
//   node build/ensure-native.mjs node      rebuild for Node only if loading fails
//   node build/ensure-native.mjs electron  rebuild for Electron's ABI
import { execSync } from 'node:child_process';
import { createRequire } from 'node:module';

const target = process.argv[2] ?? 'node';
const run = (cmd) => execSync(cmd, { stdio: 'inherit' });

if (target === 'electron') {
  run('npx electron-builder install-app-deps');
} else {
  try {
    const Database = createRequire(import.meta.url)('better-sqlite3');
    new Database(':memory:').close();
  } catch (e) {
    if (!/NODE_MODULE_VERSION|ERR_DLOPEN_FAILED|was compiled against/.test(String(e))) throw e;
    console.log('better-sqlite3 was built for another runtime (Electron); rebuilding it for Node…');
    run('npm rebuild better-sqlite3');
  }
}
