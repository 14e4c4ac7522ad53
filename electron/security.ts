/**
 * The pure half of the Electron shell: the window's security options, the
 * Content-Security-Policy, the rules for which page may call the API and
 * where it may navigate, the image-URL scheme, and the IPC wiring on both
 * sides (typed, allow-listed by the contract's CALLS and EVENTS).
 *
 * Nothing here imports Electron or Node at runtime (only `import type`), so
 * vitest runs it without the Electron binary, and the sandboxed preload can
 * bundle it (a sandboxed preload has no `require` for Node built-ins).
 * main.ts and preload.ts hand in the real `ipcMain` / `ipcRenderer`, which
 * tsc checks against the structural `*Like` interfaces below.
 */
import type { BrowserWindowConstructorOptions } from 'electron';
import {
  CALLS,
  EVENTS,
  type ApiError,
  type ApiEvents,
  type ApiHandlers,
  type ApiResult,
  type CallName,
  type CallParams,
  type CallResult,
  type EventName,
  type LetheApi,
} from './contract.ts';

// --- channels ------------------------------------------------------------------

export const CALL_PREFIX = 'lethe:';
export const EVENT_PREFIX = 'lethe-event:';

/** The ipcMain.handle / ipcRenderer.invoke channel of a call. */
export type CallChannel<K extends CallName = CallName> = `${typeof CALL_PREFIX}${K}`;
/** The webContents.send / ipcRenderer.on channel of an event. */
export type EventChannel<E extends EventName = EventName> = `${typeof EVENT_PREFIX}${E}`;

export function callChannel<K extends CallName>(name: K): CallChannel<K> {
  return `${CALL_PREFIX}${name}`;
}

export function eventChannel<E extends EventName>(name: E): EventChannel<E> {
  return `${EVENT_PREFIX}${name}`;
}

const CALL_SET: ReadonlySet<string> = new Set(CALLS);
const EVENT_SET: ReadonlySet<string> = new Set(EVENTS);

export function isCallName(name: unknown): name is CallName {
  return typeof name === 'string' && CALL_SET.has(name);
}

export function isEventName(name: unknown): name is EventName {
  return typeof name === 'string' && EVENT_SET.has(name);
}

// --- window --------------------------------------------------------------------

/**
 * BrowserWindow options for the studio: the renderer is a web page with no
 * Node (sandboxed, context-isolated), its only door to the app is the
 * preload's `window.lethe`.
 */
export function secureWindowOptions(preloadPath: string, options: { devTools?: boolean } = {}): BrowserWindowConstructorOptions {
  return {
    width: 1360,
    height: 900,
    minWidth: 960,
    minHeight: 640,
    title: 'Lethe',
    show: false,
    backgroundColor: '#1b1b1f',
    webPreferences: {
      preload: preloadPath,
      sandbox: true,
      contextIsolation: true,
      nodeIntegration: false,
      nodeIntegrationInWorker: false,
      nodeIntegrationInSubFrames: false,
      webSecurity: true,
      allowRunningInsecureContent: false,
      experimentalFeatures: false,
      webviewTag: false,
      navigateOnDragDrop: false,
      safeDialogs: true,
      spellcheck: false,
      devTools: options.devTools ?? false,
    },
  };
}

// --- content security policy -----------------------------------------------------

/** The scheme main.ts serves generated images on (files of dataDir/images only). */
export const IMAGE_SCHEME = 'lethe-image';
const IMAGE_HOST = 'images';

/**
 * Directives of the studio's CSP. No network source at all: scripts, styles
 * and fonts come from the app's own files, images also from the image scheme
 * (and data:/blob: for icons and exports). Styles allow 'unsafe-inline'
 * because Svelte writes style attributes and transition keyframes at runtime;
 * scripts do not (no inline script, no eval).
 */
export const CSP_DIRECTIVES: Readonly<Record<string, readonly string[]>> = {
  'default-src': ["'self'"],
  'script-src': ["'self'"],
  'style-src': ["'self'", "'unsafe-inline'"],
  'img-src': ["'self'", `${IMAGE_SCHEME}:`, 'data:', 'blob:'],
  'font-src': ["'self'", 'data:'],
  'connect-src': ["'self'"],
  'media-src': ["'none'"],
  'object-src': ["'none'"],
  'frame-src': ["'none'"],
  'worker-src': ["'self'"],
  'base-uri': ["'none'"],
  'form-action': ["'none'"],
  'frame-ancestors': ["'none'"],
};

function cspString(skip: readonly string[] = []): string {
  return Object.entries(CSP_DIRECTIVES)
    .filter(([name]) => !skip.includes(name))
    .map(([name, sources]) => `${name} ${sources.join(' ')}`)
    .join('; ');
}

/** The policy as the Content-Security-Policy response header (main.ts sets it on every response). */
export const CSP = cspString();

/**
 * The same policy for `<meta http-equiv="Content-Security-Policy">` in
 * renderer/index.html (frame-ancestors is not allowed in a meta policy).
 */
export const CSP_META = cspString(['frame-ancestors']);

// --- who may call, where it may go -----------------------------------------------

/** Decoded path of a file: URL, drive letter upper-cased (Windows), or null when it is not one. */
function filePath(url: string): { host: string; path: string } | null {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return null;
  }
  if (parsed.protocol !== 'file:') return null;
  let decoded: string;
  try {
    decoded = decodeURIComponent(parsed.pathname);
  } catch {
    return null;
  }
  return { host: parsed.host.toLowerCase(), path: decoded.replace(/^\/([a-z]):/, (_m, d: string) => `/${d.toUpperCase()}:`) };
}

/**
 * True when `url` is the app's own page (`appPageUrl`, the file: URL of
 * dist/renderer/index.html), whatever its #hash or ?query. Anything else
 * (http, https, data, other files, other schemes) is not.
 */
export function isAppPage(url: string | null | undefined, appPageUrl: string): boolean {
  if (typeof url !== 'string' || url === '') return false;
  const target = filePath(url);
  const page = filePath(appPageUrl);
  return target !== null && page !== null && target.host === page.host && target.path === page.path;
}

/** The part of an IPC event the sender check reads (Electron's IpcMainInvokeEvent has it). */
export interface SenderLike {
  readonly senderFrame: { readonly url: string; readonly parent: unknown } | null;
}

/**
 * The IPC sender check: the message must come from the top frame of the
 * app's own page. A destroyed frame (null), a sub-frame, or any other URL is
 * refused.
 */
export function isTrustedSender(event: SenderLike, appPageUrl: string): boolean {
  const frame = event.senderFrame;
  if (!frame || frame.parent) return false;
  return isAppPage(frame.url, appPageUrl);
}

/** The navigation rule: only the app's own page (a reload, or a change of #hash). */
export function isAllowedNavigation(url: string, appPageUrl: string): boolean {
  return isAppPage(url, appPageUrl);
}

// --- images --------------------------------------------------------------------

/** The URL the renderer loads a file of dataDir/images at (the `imageUrl` of the app core). */
export function imageUrl(file: string): string {
  return `${IMAGE_SCHEME}://${IMAGE_HOST}/${file.split(/[\\/]/).map(encodeURIComponent).join('/')}`;
}

const IMAGE_TYPES: Readonly<Record<string, string>> = {
  png: 'image/png',
  jpg: 'image/jpeg',
  jpeg: 'image/jpeg',
  webp: 'image/webp',
};

/**
 * The file an image URL names, as path segments relative to dataDir/images,
 * with its MIME type; null for anything that is not a plain image file in
 * that folder (another scheme or host, '..', empty or hidden segments,
 * separators or NUL smuggled in escapes, a type that is not an image).
 * main.ts joins the segments to the folder and also checks the real path
 * (symlinks) before reading.
 */
export function imageRequestPath(url: string): { segments: string[]; contentType: string } | null {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    return null;
  }
  if (parsed.protocol !== `${IMAGE_SCHEME}:` || parsed.host !== IMAGE_HOST || parsed.username || parsed.password || parsed.port) return null;
  const raw = parsed.pathname.replace(/^\//, '').split('/');
  const segments: string[] = [];
  for (const part of raw) {
    let segment: string;
    try {
      segment = decodeURIComponent(part);
    } catch {
      return null;
    }
    if (segment === '' || segment.startsWith('.') || /[\\/:\0]/.test(segment) || segment.length > 255) return null;
    segments.push(segment);
  }
  if (segments.length === 0 || segments.length > 4) return null;
  const ext = /\.([a-z0-9]+)$/i.exec(segments[segments.length - 1])?.[1]?.toLowerCase();
  const contentType = ext ? IMAGE_TYPES[ext] : undefined;
  return contentType ? { segments, contentType } : null;
}

// --- main side: calls ------------------------------------------------------------

/** The part of `ipcMain` the wiring uses (Electron's ipcMain is assignable to it). */
export interface IpcMainLike {
  handle(channel: string, listener: (event: SenderLike, ...args: unknown[]) => unknown): void;
  removeHandler(channel: string): void;
}

/**
 * An error as the UI sees it. LetheErrors (and errors that crossed a process
 * boundary with a kebab-case `code`) keep their code and message; anything
 * else is 'internal' (system error codes such as ENOENT are not API codes).
 */
export function toApiError(e: unknown): ApiError {
  if (typeof e === 'object' && e !== null) {
    const { code, message } = e as { code?: unknown; message?: unknown };
    if (typeof code === 'string' && /^[a-z][a-z0-9]*(-[a-z0-9]+)*$/.test(code) && typeof message === 'string') return { code, message };
    if (typeof message === 'string') return { code: 'internal', message: `Lethe failed unexpectedly: ${message}` };
  }
  return { code: 'internal', message: `Lethe failed unexpectedly: ${String(e)}` };
}

/** The handler of one channel, as ipcMain.handle runs it: sender check, params check, ApiResult. */
export type IpcCallHandler<K extends CallName> = (event: SenderLike, params?: unknown) => Promise<ApiResult<CallResult<K>>>;

/**
 * The one typed wrapper every channel goes through. It never throws: a
 * refused sender, bad params or a failing handler all come back as
 * `{ ok: false, error }`. The params' fields are validated by the handler
 * (app-core checks every field, as it must for the web transport too).
 */
export function ipcCallHandler<K extends CallName>(
  name: K,
  handler: (params: CallParams<K>) => Promise<CallResult<K>>,
  isTrusted: (event: SenderLike) => boolean,
): IpcCallHandler<K> {
  return async (event, params) => {
    if (!isTrusted(event)) {
      return { ok: false, error: { code: 'forbidden', message: `'${name}' was called from a page that is not the Lethe studio; the call was refused.` } };
    }
    const p = params === undefined ? {} : params;
    if (typeof p !== 'object' || p === null || Array.isArray(p)) {
      return { ok: false, error: { code: 'invalid-request', message: `'${name}' takes an object of params.` } };
    }
    try {
      return { ok: true, value: await handler(p as CallParams<K>) };
    } catch (e) {
      return { ok: false, error: toApiError(e) };
    }
  };
}

/**
 * Registers every channel of CALLS on `ipc`, each through ipcCallHandler.
 * `handlers` must be a full ApiHandlers (a call added to the contract and
 * not implemented fails tsc where that object is built). Returns the undo.
 */
export function registerApiHandlers(ipc: IpcMainLike, handlers: ApiHandlers, isTrusted: (event: SenderLike) => boolean): () => void {
  for (const name of CALLS) registerCall(ipc, name, handlers[name], isTrusted);
  return () => {
    for (const name of CALLS) ipc.removeHandler(callChannel(name));
  };
}

function registerCall<K extends CallName>(ipc: IpcMainLike, name: K, handler: ApiHandlers[K], isTrusted: (event: SenderLike) => boolean): void {
  ipc.handle(callChannel(name), ipcCallHandler(name, handler, isTrusted));
}

// --- main side: events -----------------------------------------------------------

/** Subscribes to one event of the app core (AppEvents.on has this shape). */
export interface EventSource {
  on<E extends EventName>(event: E, listener: (payload: ApiEvents[E]) => void): () => void;
}

/** Forwards every event of EVENTS to `send(channel, payload)`; returns the unsubscribe. */
export function forwardEvents(source: EventSource, send: <E extends EventName>(channel: EventChannel<E>, payload: ApiEvents[E]) => void): () => void {
  const offs = EVENTS.map((name) => forwardEvent(source, name, send));
  return () => {
    for (const off of offs) off();
  };
}

function forwardEvent<E extends EventName>(
  source: EventSource,
  name: E,
  send: <F extends EventName>(channel: EventChannel<F>, payload: ApiEvents[F]) => void,
): () => void {
  const channel = eventChannel(name);
  return source.on(name, (payload) => send(channel, payload));
}

// --- preload side ----------------------------------------------------------------

/** The part of `ipcRenderer` the bridge uses (Electron's ipcRenderer is assignable to it). */
export interface IpcRendererLike {
  invoke(channel: string, ...args: unknown[]): Promise<unknown>;
  on(channel: string, listener: (event: unknown, ...args: unknown[]) => void): unknown;
  removeListener(channel: string, listener: (event: unknown, ...args: unknown[]) => void): unknown;
}

/**
 * The object the preload exposes as `window.lethe`: exactly LetheApi
 * (tests/electron-contract.test.ts checks the type). Calls outside CALLS and
 * events outside EVENTS are refused here, before any IPC; listeners get the
 * payload only, never the IpcRendererEvent (whose `sender` is ipcRenderer).
 */
export function createBridgeApi(ipc: IpcRendererLike) {
  const call = async <K extends CallName>(channel: K, params: CallParams<K>): Promise<ApiResult<CallResult<K>>> => {
    if (!isCallName(channel)) {
      return { ok: false, error: { code: 'unknown-call', message: `'${String(channel)}' is not a call of the Lethe API.` } };
    }
    try {
      return (await ipc.invoke(callChannel(channel), params)) as ApiResult<CallResult<K>>;
    } catch (e) {
      return { ok: false, error: { code: 'ipc', message: `The call '${channel}' did not reach the app: ${e instanceof Error ? e.message : String(e)}` } };
    }
  };

  const on = <E extends EventName>(event: E, listener: (payload: ApiEvents[E]) => void): (() => void) => {
    if (!isEventName(event)) throw new TypeError(`'${String(event)}' is not an event of the Lethe API.`);
    if (typeof listener !== 'function') throw new TypeError('The listener must be a function.');
    const channel = eventChannel(event);
    const wrapped = (_event: unknown, payload: unknown): void => listener(payload as ApiEvents[E]);
    ipc.on(channel, wrapped);
    let subscribed = true;
    return () => {
      if (!subscribed) return;
      subscribed = false;
      ipc.removeListener(channel, wrapped);
    };
  };

  const api = { call, on };
  return api satisfies LetheApi;
}
