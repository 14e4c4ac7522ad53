/**
 * Builds the Electron side into dist/electron/:
 *   main.js        the main process (ESM: package.json is "type": "module";
 *                  Electron >= 28 loads an ESM main)
 *   job-worker.js  the utility process that runs jobs (ESM)
 *   preload.cjs    the preload, ONE CommonJS file: a sandboxed preload is run
 *                  as a plain script whose `require` knows only 'electron' (and
 *                  events, timers, url), so it can neither import local modules
 *                  nor be ESM
 *
 *   npx vite build -c electron/vite.electron.config.ts
 *
 * The sources (core/ and electron/) are TypeScript that import each other
 * with .ts extensions; they and the pure-JS dependencies are bundled. Left
 * external, loaded from node_modules at runtime: electron, the native modules
 * onnxruntime-node and better-sqlite3 (they load .node binaries and shared
 * libraries by path, which electron-builder.yml unpacks from the asar), and
 * Node built-ins.
 *
 * main and job-worker are one SSR (Node-target) build; the preload is a
 * second, library build in CommonJS, started when the first one has closed.
 */
import { builtinModules } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { build, defineConfig, type InlineConfig, type Plugin } from 'vite';

const root = fileURLToPath(new URL('..', import.meta.url));
const outDir = path.join(root, 'dist', 'electron');

/** Packages that stay require()/import()ed from node_modules. */
const EXTERNAL_PACKAGES = ['electron', 'onnxruntime-node', 'better-sqlite3'];
const BUILTINS = new Set([...builtinModules, ...builtinModules.map((m) => `node:${m}`)]);

function isExternal(id: string): boolean {
  return BUILTINS.has(id) || id.startsWith('node:') || EXTERNAL_PACKAGES.some((p) => id === p || id.startsWith(`${p}/`));
}

/** Fails the build when a bundle would load at runtime something other than `allowed`. */
function onlyImports(allowed: readonly string[]): Plugin {
  return {
    name: 'lethe:only-imports',
    generateBundle(_options, bundle) {
      for (const chunk of Object.values(bundle)) {
        if (chunk.type !== 'chunk') continue;
        const bad = [...chunk.imports, ...chunk.dynamicImports].filter((id) => !allowed.includes(id) && !(id in bundle));
        if (bad.length) this.error(`${chunk.fileName} would load ${bad.join(', ')} at runtime; a sandboxed preload may only require ${allowed.join(', ')}.`);
      }
    },
  };
}

const preloadConfig: InlineConfig = {
  configFile: false,
  root,
  publicDir: false,
  logLevel: 'warn',
  build: {
    outDir,
    emptyOutDir: false,
    // Runs in the renderer (Chromium), not in Node.
    target: 'es2022',
    minify: false,
    sourcemap: true,
    lib: {
      entry: path.join(root, 'electron', 'preload.ts'),
      formats: ['cjs'],
      fileName: () => 'preload.cjs',
    },
    rollupOptions: {
      external: ['electron'],
      output: { inlineDynamicImports: true, exports: 'named' },
      plugins: [onlyImports(['electron'])],
    },
  },
};

/** Builds the preload once the main build has been written. */
function preloadBuild(): Plugin {
  return {
    name: 'lethe:preload-build',
    apply: 'build',
    async closeBundle(error?: Error) {
      if (error) return;
      await build(preloadConfig);
    },
  };
}

export default defineConfig({
  root,
  publicDir: false,
  logLevel: 'info',
  // Bundle every dependency but the externals above (builtins are external in SSR builds anyway).
  ssr: { noExternal: true, external: EXTERNAL_PACKAGES, target: 'node' },
  build: {
    ssr: true,
    outDir,
    emptyOutDir: true,
    target: 'node22',
    minify: false,
    sourcemap: true,
    reportCompressedSize: false,
    rollupOptions: {
      input: {
        main: path.join(root, 'electron', 'main.ts'),
        'job-worker': path.join(root, 'electron', 'job-worker.ts'),
      },
      external: isExternal,
      output: {
        format: 'es',
        entryFileNames: '[name].js',
        chunkFileNames: 'chunks/[name]-[hash].js',
      },
    },
  },
  plugins: [preloadBuild()],
});
