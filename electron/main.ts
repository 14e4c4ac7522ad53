/**
 * The Electron main process: one window on the studio page
 * (dist/renderer/index.html), the API contract over IPC, generated images on
 * the `lethe-image:` scheme, jobs in a utility process, the menu.
 *
 * Built by electron/vite.electron.config.ts into dist/electron/main.js (ESM),
 * next to preload.cjs and job-worker.js. The security rules themselves (window
 * options, CSP, sender and navigation checks, image URLs, IPC wiring) live in
 * security.ts, which tests run without Electron.
 */
import { readFile, realpath } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import {
  BrowserWindow,
  Menu,
  app,
  dialog,
  ipcMain,
  protocol,
  session,
  utilityProcess,
  type MenuItemConstructorOptions,
  type MessageBoxOptions,
  type OpenDialogOptions,
  type WebContents,
} from 'electron';
import { createAppCore, type AppCore } from './app-core.ts';
import type { JobWorkerChannel } from './job-host.ts';
import type { WorkerMessage } from './job-worker.ts';
import {
  CSP,
  IMAGE_SCHEME,
  forwardEvents,
  imageRequestPath,
  imageUrl,
  isAllowedNavigation,
  isTrustedSender,
  registerApiHandlers,
  secureWindowOptions,
  toApiError,
} from './security.ts';

// --- where things are ------------------------------------------------------------

/** dist/electron/ (this bundle, preload.cjs, job-worker.js). */
const here = path.dirname(fileURLToPath(import.meta.url));
/** The app root: the repository in development, resources/app.asar when packaged. */
const appRoot = path.resolve(here, '..', '..');
const rendererIndex = path.join(appRoot, 'dist', 'renderer', 'index.html');
const appPageUrl = pathToFileURL(rendererIndex).href;
const preloadPath = path.join(here, 'preload.cjs');
const workerPath = path.join(here, 'job-worker.js');
/**
 * Files native code opens by path (onnxruntime reads model weights in place)
 * cannot be inside app.asar: electron-builder.yml unpacks models/ next to it.
 */
const unpacked = (p: string): string => p.replace(/([\\/])app\.asar(?=[\\/]|$)/, '$1app.asar.unpacked');
const builtInModelsDir = unpacked(path.join(appRoot, 'models'));

const isDev = !app.isPackaged;
const isMac = process.platform === 'darwin';

const log = (message: string): void => console.error(`[lethe] ${message}`);

// --- before ready ----------------------------------------------------------------

// Privileged schemes must be registered before 'ready'. standard: parsed like
// http (host + path); secure: not mixed content. No bypassCSP: img-src names it.
protocol.registerSchemesAsPrivileged([{ scheme: IMAGE_SCHEME, privileges: { standard: true, secure: true, supportFetchAPI: true } }]);
// Every renderer sandboxed, whatever a window's options say.
app.enableSandbox();

let core: AppCore | null = null;
let mainWindow: BrowserWindow | null = null;
let coreState: 'none' | 'open' | 'closing' | 'closed' = 'none';
const undo: (() => void)[] = [];

if (!app.requestSingleInstanceLock()) {
  // Another Lethe owns the data folder (one writer to history.db): it gets focused instead.
  app.quit();
} else {
  app.on('second-instance', () => {
    if (!mainWindow) return;
    if (mainWindow.isMinimized()) mainWindow.restore();
    mainWindow.focus();
  });
  app.on('web-contents-created', (_event, contents) => hardenContents(contents));
  app.on('window-all-closed', () => {
    if (!isMac) app.quit();
  });
  app.on('activate', () => {
    if (app.isReady() && core && BrowserWindow.getAllWindows().length === 0) createWindow();
  });
  app.on('will-quit', (event) => {
    // Close the app core (stop the job worker between steps, close the
    // database) before the process ends; quit again once it is closed.
    if (!core || coreState === 'closed' || coreState === 'none') return;
    event.preventDefault();
    if (coreState === 'closing') return;
    coreState = 'closing';
    for (const off of undo.splice(0)) off();
    core
      .close()
      .catch((e: unknown) => log(`closing the app core failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`))
      .finally(() => {
        coreState = 'closed';
        app.quit();
      });
  });
  for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => app.quit());

  app
    .whenReady()
    .then(start)
    .catch((e: unknown) => {
      let message = e instanceof Error ? e.message : String(e);
      log(`Lethe could not start: ${e instanceof Error ? (e.stack ?? message) : message}`);
      if (/NODE_MODULE_VERSION/.test(message)) {
        // better-sqlite3 built for the Node.js of the tests, not for Electron (a checkout after npm install).
        message += '\n\nA native module was built for another Node.js ABI than Electron\'s: run `npx electron-builder install-app-deps` (and `npm rebuild better-sqlite3` before running the tests again).';
      }
      dialog.showErrorBox('Lethe could not start', message);
      app.exit(1);
    });
}

// --- start ---------------------------------------------------------------------

function start(): void {
  const dataDir = app.getPath('userData');
  const imagesDir = path.join(dataDir, 'images');
  lockDownSession();
  protocol.handle(IMAGE_SCHEME, (request) => serveImage(imagesDir, request));

  core = createAppCore({
    dataDir,
    transport: 'electron',
    imageUrl,
    builtInModelsDir,
    spawnWorker: spawnUtilityWorker,
    pickModel,
    log,
  });
  coreState = 'open';
  undo.push(registerApiHandlers(ipcMain, core.handlers, (event) => isTrustedSender(event, appPageUrl)));
  undo.push(
    forwardEvents(core.events, (channel, payload) => {
      for (const win of BrowserWindow.getAllWindows()) {
        if (!win.isDestroyed() && !win.webContents.isDestroyed()) win.webContents.send(channel, payload);
      }
    }),
  );

  Menu.setApplicationMenu(Menu.buildFromTemplate(menuTemplate()));
  createWindow();
}

/** Permissions denied, the CSP on every response, no request to the network at all. */
function lockDownSession(): void {
  const ses = session.defaultSession;
  ses.setPermissionRequestHandler((_contents, _permission, callback) => callback(false));
  ses.setPermissionCheckHandler(() => false);
  ses.setDevicePermissionHandler(() => false);
  ses.webRequest.onBeforeRequest({ urls: ['http://*/*', 'https://*/*', 'ws://*/*', 'wss://*/*'] }, (details, callback) => {
    log(`blocked a request to ${details.url}: the studio loads nothing from the network`);
    callback({ cancel: true });
  });
  ses.webRequest.onHeadersReceived((details, callback) => {
    const headers = Object.fromEntries(Object.entries(details.responseHeaders ?? {}).filter(([name]) => !/^content-security-policy/i.test(name)));
    callback({ responseHeaders: { ...headers, 'Content-Security-Policy': [CSP] } });
  });
}

/** Navigation, new windows and webviews: none, except the app's own page. */
function hardenContents(contents: WebContents): void {
  contents.on('will-navigate', (event) => {
    if (!isAllowedNavigation(event.url, appPageUrl)) {
      event.preventDefault();
      log(`blocked navigation to ${event.url}`);
    }
  });
  contents.on('will-frame-navigate', (event) => {
    if (!event.isMainFrame || !isAllowedNavigation(event.url, appPageUrl)) event.preventDefault();
  });
  contents.on('will-redirect', (event) => {
    if (!isAllowedNavigation(event.url, appPageUrl)) event.preventDefault();
  });
  contents.on('will-attach-webview', (event) => event.preventDefault());
  contents.setWindowOpenHandler(({ url }) => {
    log(`blocked a new window for ${url}`);
    return { action: 'deny' };
  });
}

function createWindow(): void {
  const win = new BrowserWindow(secureWindowOptions(preloadPath, { devTools: isDev }));
  mainWindow = win;
  win.once('ready-to-show', () => win.show());
  win.on('closed', () => {
    if (mainWindow === win) mainWindow = null;
  });
  win.webContents.on('render-process-gone', (_event, details) => log(`the studio page's process ended (${details.reason}, exit code ${details.exitCode})`));
  win.loadFile(rendererIndex).catch((e: unknown) => {
    const message = e instanceof Error ? e.message : String(e);
    log(`could not load ${rendererIndex}: ${message}`);
    dialog.showErrorBox('The studio page did not load', `${rendererIndex} could not be loaded (${message}). In a checkout, build it first: npm run build.`);
  });
}

// --- images --------------------------------------------------------------------

/** lethe-image://images/<file>: a PNG (or JPEG, WebP) inside dataDir/images, nothing else. */
async function serveImage(imagesDir: string, request: Request): Promise<Response> {
  const notFound = (): Response => new Response('Not found', { status: 404, headers: { 'content-type': 'text/plain' } });
  if (request.method !== 'GET' && request.method !== 'HEAD') return new Response(null, { status: 405 });
  const target = imageRequestPath(request.url);
  if (!target) return notFound();
  try {
    // Real paths on both sides: a symlink inside images/ cannot lead out of it.
    const root = await realpath(imagesDir);
    const file = await realpath(path.join(root, ...target.segments));
    const relative = path.relative(root, file);
    if (relative === '' || relative.split(path.sep)[0] === '..' || path.isAbsolute(relative)) return notFound();
    const body = await readFile(file);
    return new Response(request.method === 'HEAD' ? null : new Uint8Array(body), {
      status: 200,
      headers: {
        'content-type': target.contentType,
        'content-length': String(body.byteLength),
        'cache-control': 'private, max-age=31536000, immutable',
        'x-content-type-options': 'nosniff',
      },
    });
  } catch {
    return notFound();
  }
}

// --- jobs ----------------------------------------------------------------------

/** The job worker in an Electron utility process (job-worker.ts talks over process.parentPort). */
function spawnUtilityWorker(): JobWorkerChannel {
  const child = utilityProcess.fork(workerPath, [], { serviceName: 'Lethe jobs', stdio: 'inherit' });
  let fatal: string | null = null;
  child.on('error', (type, location) => (fatal = `${type} at ${location}`));
  const exited = new Promise<number>((resolve) => child.once('exit', resolve));
  let alive = true;
  void exited.then(() => (alive = false));
  return {
    send: (message) => {
      if (alive) child.postMessage(message);
    },
    onMessage: (listener) => child.on('message', (message: unknown) => listener(message as WorkerMessage)),
    onExit: (listener) => {
      void exited.then((code) => listener(code === 0 && !fatal ? null : new Error(fatal ? `the job worker failed (${fatal})` : `the job worker exited with code ${code}`)));
    },
    kill: () => {
      if (alive) child.kill();
    },
  };
}

// --- dialogs and menu ------------------------------------------------------------

function parentWindow(): BrowserWindow | null {
  return BrowserWindow.getFocusedWindow() ?? mainWindow;
}

function messageBox(options: MessageBoxOptions): Promise<Electron.MessageBoxReturnValue> {
  const parent = parentWindow();
  return parent ? dialog.showMessageBox(parent, options) : dialog.showMessageBox(options);
}

/**
 * 'models.pick': a diffusers folder or a single .safetensors file. macOS has
 * one dialog for both; on Windows and Linux a dialog asked for both shows a
 * folder picker only, so the user first says which of the two it is.
 */
async function pickModel(): Promise<{ path: string } | null> {
  let properties: OpenDialogOptions['properties'] = ['openFile', 'openDirectory'];
  if (!isMac) {
    const { response } = await messageBox({
      type: 'question',
      title: 'Add a model',
      message: 'What does the model come as?',
      detail: 'A diffusers folder (with model_index.json, unet/, vae/, text_encoder/ …) or a single .safetensors checkpoint file.',
      buttons: ['Folder…', 'Checkpoint file…', 'Cancel'],
      defaultId: 0,
      cancelId: 2,
      noLink: true,
    });
    if (response === 2) return null;
    properties = response === 0 ? ['openDirectory'] : ['openFile'];
  }
  const options: OpenDialogOptions = {
    title: 'Add a model',
    buttonLabel: 'Add',
    properties: [...(properties ?? []), 'dontAddToRecent'],
    filters: [
      { name: 'Safetensors checkpoint', extensions: ['safetensors'] },
      { name: 'All files', extensions: ['*'] },
    ],
  };
  const parent = parentWindow();
  const result = parent ? await dialog.showOpenDialog(parent, options) : await dialog.showOpenDialog(options);
  const picked = result.filePaths[0];
  return result.canceled || !picked ? null : { path: picked };
}

/** File > Add model…: the same picker, then 'models.add' (which validates the model). */
async function addModelFromMenu(): Promise<void> {
  if (!core) return;
  const picked = await pickModel();
  if (!picked) return;
  try {
    const model = await core.handlers['models.add']({ path: picked.path });
    await messageBox({
      type: 'info',
      title: 'Model added',
      message: `Added “${model.name}”.`,
      detail: `${model.path}\n\nIt is in the model lists from now on (a page that is open shows it once it lists the models again).`,
    });
  } catch (e) {
    const error = toApiError(e);
    await messageBox({ type: 'error', title: 'Model not added', message: 'The model was not added.', detail: error.message });
  }
}

async function showAbout(): Promise<void> {
  const info = core ? await core.handlers['app.info']({}).catch(() => null) : null;
  await messageBox({
    type: 'info',
    title: 'About Lethe',
    message: `Lethe ${info?.version ?? app.getVersion()}`,
    detail: [
      'Erases concepts from text-to-image diffusion models, and compares the original and the sanitized model side by side.',
      '',
      info ? `Runs on: ${info.provider}${info.providerNote ? ` (${info.providerNote})` : ''}` : null,
      info ? `Data: ${info.dataDir}` : null,
      `Electron ${process.versions.electron}, Chromium ${process.versions.chrome}, Node.js ${process.versions.node}`,
    ]
      .filter((line) => line !== null)
      .join('\n'),
  });
}

function menuTemplate(): MenuItemConstructorOptions[] {
  const view: MenuItemConstructorOptions[] = [
    ...(isDev ? ([{ role: 'reload' }, { role: 'forceReload' }, { role: 'toggleDevTools' }, { type: 'separator' }] as const) : []),
    { role: 'resetZoom' },
    { role: 'zoomIn' },
    { role: 'zoomOut' },
    { type: 'separator' },
    { role: 'togglefullscreen' },
  ];
  return [
    ...(isMac ? [{ role: 'appMenu' } as const] : []),
    {
      label: '&File',
      submenu: [
        { label: 'Add Model…', accelerator: 'CmdOrCtrl+O', click: () => void addModelFromMenu() },
        { type: 'separator' },
        isMac ? { role: 'close' } : { role: 'quit' },
      ],
    },
    { role: 'editMenu' },
    { label: '&View', submenu: view },
    { role: 'help', submenu: [{ label: 'About Lethe', click: () => void showAbout() }] },
  ];
}
