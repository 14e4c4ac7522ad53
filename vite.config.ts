import { fileURLToPath } from 'node:url';
import { svelte } from '@sveltejs/vite-plugin-svelte';
import { defineConfig, type Plugin } from 'vite';
import { CSP_META } from './electron/security.ts';

const here = (path: string) => fileURLToPath(new URL(path, import.meta.url));

/**
 * The Electron CSP (electron/security.ts, one source) as a <meta> in the built
 * index.html, so it holds for a file:// page too; not in `vite` dev, whose
 * client needs more. The web server sends its own header on top.
 */
function cspMeta(): Plugin {
  return {
    name: 'lethe-csp-meta',
    apply: 'build',
    transformIndexHtml: (html) =>
      html.replace('<meta charset="utf-8" />', `$&\n    <meta http-equiv="Content-Security-Policy" content="${CSP_META}" />`),
  };
}

/**
 * The studio's renderer: a Svelte 5 app in renderer/, built into dist/renderer/.
 * base './' keeps every asset URL relative, so the same build loads from file://
 * in Electron and from the web server. Nothing remote: the CSP `default-src 'self'`
 * holds (no inline scripts, no fonts or CDNs).
 *
 * `npx vite` serves the renderer for development; set LETHE_API to the address of
 * a running `lethe serve` (e.g. http://127.0.0.1:7860) to proxy /api to it.
 */
export default defineConfig({
  root: here('./renderer'),
  base: './',
  plugins: [svelte({ configFile: false, compilerOptions: { runes: true } }), cspMeta()],
  build: {
    outDir: here('./dist/renderer'),
    emptyOutDir: true,
    target: 'chrome120',
    modulePreload: { polyfill: false },
    sourcemap: true,
  },
  server: process.env.LETHE_API
    ? { proxy: { '/api': { target: process.env.LETHE_API, ws: true, changeOrigin: true } } }
    : {},
});
