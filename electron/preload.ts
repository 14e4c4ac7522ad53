/**
 * The preload: the renderer's only door to the app. It exposes exactly
 * `LetheApi` as `window.lethe` (call: CALLS only, over `ipcRenderer.invoke`;
 * on: EVENTS only) and nothing else: no ipcRenderer, no Node.
 *
 * It runs sandboxed, where `require` knows only a few Electron modules, so
 * it is bundled into one CommonJS file (electron/vite.electron.config.ts ->
 * dist/electron/preload.cjs) and imports nothing but 'electron' and the pure
 * modules security.ts and contract.ts.
 */
import { contextBridge, ipcRenderer } from 'electron';
import { createBridgeApi } from './security.ts';

const api = createBridgeApi(ipcRenderer);

/** The type of what the renderer gets as `window.lethe` (tests check it is exactly LetheApi). */
export type ExposedApi = typeof api;

contextBridge.exposeInMainWorld('lethe', api);
