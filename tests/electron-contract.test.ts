/**
 * The Electron shell against the API contract, without the Electron binary:
 * only electron/security.ts (pure) is imported at runtime; preload.ts is
 * imported for its type alone (`import type` is erased, so 'electron' is
 * never loaded).
 *
 * How the type-level tests fail the build. `npm test` runs `tsc --noEmit`
 * over tests/ and electron/ first, and expectTypeOf(...).toEqualTypeOf<T>()
 * only accepts its argument when the two types are identical, so a mismatch
 * is a compile error in this file (vitest itself would pass it: the checks
 * are no-ops at runtime):
 * - a call added to ApiCalls but not to CALLS: `_everyCallListed` in
 *   contract.ts and the CALLS === keyof ApiHandlers check below fail;
 * - a call in the contract without a handler: the object app-core.ts builds
 *   is typed ApiHandlers and misses a key, and `registerApiHandlers` (the
 *   only way main.ts wires IPC) takes nothing less than ApiHandlers;
 * - a param or result type changed on one side only: the preload's `call`
 *   (ExposedApi) must stay identical to LetheApi, and the per-channel
 *   params / results the preload sends must equal those the registered
 *   handlers take / return (checked for every channel as one mapped type).
 */
import { describe, expect, expectTypeOf, it } from 'vitest';
import type { ExposedApi } from '../electron/preload.ts';
import {
  CALLS,
  EVENTS,
  type ApiEvents,
  type ApiHandlers,
  type ApiResult,
  type CallName,
  type CallParams,
  type CallResult,
  type EventName,
  type LetheApi,
} from '../electron/contract.ts';
import {
  CSP,
  CSP_DIRECTIVES,
  CSP_META,
  IMAGE_SCHEME,
  callChannel,
  createBridgeApi,
  eventChannel,
  forwardEvents,
  imageRequestPath,
  imageUrl,
  isAllowedNavigation,
  isAppPage,
  isTrustedSender,
  registerApiHandlers,
  secureWindowOptions,
  toApiError,
  type EventSource,
  type IpcMainLike,
  type IpcRendererLike,
  type SenderLike,
} from '../electron/security.ts';

// --- fakes ------------------------------------------------------------------------

const APP_PAGE = 'file:///opt/Lethe/resources/app.asar/dist/renderer/index.html';
const WIN_PAGE = 'file:///C:/Program%20Files/Lethe/resources/app.asar/dist/renderer/index.html';

const sender = (url: string, parent: unknown = null): SenderLike => ({ senderFrame: { url, parent } });

/** Records what main registers on ipcMain. */
class FakeIpcMain implements IpcMainLike {
  readonly handlers = new Map<string, (event: SenderLike, ...args: unknown[]) => unknown>();
  handle(channel: string, listener: (event: SenderLike, ...args: unknown[]) => unknown): void {
    if (this.handlers.has(channel)) throw new Error(`second handler for ${channel}`);
    this.handlers.set(channel, listener);
  }
  removeHandler(channel: string): void {
    this.handlers.delete(channel);
  }
  invoke(channel: string, event: SenderLike, params?: unknown): Promise<unknown> {
    const h = this.handlers.get(channel);
    if (!h) return Promise.reject(new Error(`No handler registered for '${channel}'`));
    return Promise.resolve(h(event, params));
  }
}

/** ipcRenderer wired to a FakeIpcMain, sender = the app page. */
class FakeIpcRenderer implements IpcRendererLike {
  readonly listeners = new Map<string, Set<(event: unknown, ...args: unknown[]) => void>>();
  readonly invoked: string[] = [];
  constructor(private readonly main: FakeIpcMain) {}
  invoke(channel: string, ...args: unknown[]): Promise<unknown> {
    this.invoked.push(channel);
    return this.main.invoke(channel, sender(APP_PAGE), args[0]);
  }
  on(channel: string, listener: (event: unknown, ...args: unknown[]) => void): this {
    let set = this.listeners.get(channel);
    if (!set) this.listeners.set(channel, (set = new Set()));
    set.add(listener);
    return this;
  }
  removeListener(channel: string, listener: (event: unknown, ...args: unknown[]) => void): this {
    this.listeners.get(channel)?.delete(listener);
    return this;
  }
  emit(channel: string, payload: unknown): void {
    for (const l of this.listeners.get(channel) ?? []) l({ sender: 'the ipcRenderer itself' }, payload);
  }
}

const job = { id: 'j1', kind: 'generate', state: 'running', done: 0, total: 2, createdAt: '2025-01-01T00:00:00Z' } as const;

/** A full ApiHandlers whose calls record their params. */
function fakeHandlers(seen: { name: CallName; params: unknown }[]): ApiHandlers {
  const record =
    <K extends CallName>(name: K, result: CallResult<K>) =>
    async (params: CallParams<K>): Promise<CallResult<K>> => {
      seen.push({ name, params });
      return result;
    };
  return {
    'app.info': record('app.info', { version: '0.1.0', provider: 'cpu', providerNote: null, dataDir: '/data', defaultModelId: null, transport: 'electron' }),
    'models.list': record('models.list', []),
    'models.add': async (params) => {
      seen.push({ name: 'models.add', params });
      throw Object.assign(new Error('/x.safetensors has no UNet weights.'), { code: 'unsupported-model' });
    },
    'models.remove': record('models.remove', { removed: true }),
    'models.pick': record('models.pick', null),
    'generate.start': record('generate.start', { jobId: 'j1' }),
    'ab.start': record('ab.start', { jobId: 'j2' }),
    'jobs.cancel': record('jobs.cancel', { cancelled: true }),
    'jobs.list': record('jobs.list', [job]),
    'history.search': record('history.search', { items: [], total: 0 }),
    'history.get': async () => {
      throw new TypeError('Cannot read properties of undefined');
    },
  };
}

// --- (a) types -------------------------------------------------------------------

/** Values to take instantiation expressions of (`typeof _exposed.call<K>`); types only, nothing at runtime. */
declare const _exposed: ExposedApi;
declare const _eventSource: EventSource;

describe('contract wiring (types: enforced by tsc --noEmit)', () => {
  it('the preload exposes exactly LetheApi', () => {
    expectTypeOf<ExposedApi>().toEqualTypeOf<LetheApi>();
    expectTypeOf<ReturnType<typeof createBridgeApi>>().toEqualTypeOf<LetheApi>();
  });

  it('CALLS and EVENTS list exactly the contract', () => {
    expectTypeOf<(typeof CALLS)[number]>().toEqualTypeOf<keyof ApiHandlers>();
    expectTypeOf<(typeof CALLS)[number]>().toEqualTypeOf<CallName>();
    expectTypeOf<(typeof EVENTS)[number]>().toEqualTypeOf<EventName>();
  });

  it('main registers a full ApiHandlers, and each channel carries the same params and result on both sides', () => {
    // registerApiHandlers is the only IPC registration main.ts does; it takes ApiHandlers, nothing partial.
    expectTypeOf(registerApiHandlers).parameter(1).toEqualTypeOf<ApiHandlers>();

    /** What the preload sends and gets back, per channel. */
    type PreloadSide = { [K in CallName]: { params: Parameters<typeof _exposed.call<K>>[1]; result: Awaited<ReturnType<typeof _exposed.call<K>>> } };
    /** What the handler registered on ipcMain takes and (as ApiResult) returns, per channel. */
    type MainSide = { [K in CallName]: { params: Parameters<ApiHandlers[K]>[0]; result: ApiResult<Awaited<ReturnType<ApiHandlers[K]>>> } };
    expectTypeOf<PreloadSide>().toEqualTypeOf<MainSide>();

    /** Events: the payload main forwards is the payload a renderer listener gets. */
    type Listened = { [E in EventName]: Parameters<Parameters<typeof _exposed.on<E>>[1]>[0] };
    type Forwarded = { [E in EventName]: Parameters<Parameters<typeof _eventSource.on<E>>[1]>[0] };
    expectTypeOf<Listened>().toEqualTypeOf<Forwarded>();
    expectTypeOf<Listened>().toEqualTypeOf<ApiEvents>();
  });
});

// --- IPC at runtime (fakes, no Electron) ----------------------------------------------

describe('IPC wiring', () => {
  it('registers one lethe:<call> channel per CALLS entry, and the undo removes them', () => {
    const ipc = new FakeIpcMain();
    const off = registerApiHandlers(ipc, fakeHandlers([]), (e) => isTrustedSender(e, APP_PAGE));
    expect([...ipc.handlers.keys()].sort()).toEqual(CALLS.map((c) => `lethe:${c}`).sort());
    off();
    expect(ipc.handlers.size).toBe(0);
  });

  it('a call goes preload -> main -> handler and comes back as ApiResult', async () => {
    const seen: { name: CallName; params: unknown }[] = [];
    const ipc = new FakeIpcMain();
    registerApiHandlers(ipc, fakeHandlers(seen), (e) => isTrustedSender(e, APP_PAGE));
    const api = createBridgeApi(new FakeIpcRenderer(ipc));

    expect(await api.call('jobs.cancel', { jobId: 'j1', mode: 'now' })).toEqual({ ok: true, value: { cancelled: true } });
    expect(seen).toEqual([{ name: 'jobs.cancel', params: { jobId: 'j1', mode: 'now' } }]);
    expect(await api.call('models.pick', {})).toEqual({ ok: true, value: null });
  });

  it('errors become { ok: false, error } with the LetheError code, else internal', async () => {
    const ipc = new FakeIpcMain();
    registerApiHandlers(ipc, fakeHandlers([]), (e) => isTrustedSender(e, APP_PAGE));
    const api = createBridgeApi(new FakeIpcRenderer(ipc));
    expect(await api.call('models.add', { path: '/x.safetensors' })).toEqual({ ok: false, error: { code: 'unsupported-model', message: '/x.safetensors has no UNet weights.' } });
    const r = await api.call('history.get', { id: 'g1' });
    expect(r.ok).toBe(false);
    if (!r.ok) {
      expect(r.error.code).toBe('internal');
      expect(r.error.message).toContain('Cannot read properties of undefined');
    }
    expect(toApiError(Object.assign(new Error('nope'), { code: 'ENOENT' })).code).toBe('internal');
  });

  it('refuses untrusted senders and non-object params before the handler runs', async () => {
    const seen: { name: CallName; params: unknown }[] = [];
    const ipc = new FakeIpcMain();
    registerApiHandlers(ipc, fakeHandlers(seen), (e) => isTrustedSender(e, APP_PAGE));
    const evil = await ipc.invoke('lethe:models.remove', sender('https://evil.example/'), { id: 'm1' });
    expect(evil).toMatchObject({ ok: false, error: { code: 'forbidden' } });
    const framed = await ipc.invoke('lethe:models.remove', sender(APP_PAGE, { url: APP_PAGE }), { id: 'm1' });
    expect(framed).toMatchObject({ ok: false, error: { code: 'forbidden' } });
    expect(await ipc.invoke('lethe:models.remove', { senderFrame: null }, { id: 'm1' })).toMatchObject({ ok: false, error: { code: 'forbidden' } });
    expect(await ipc.invoke('lethe:models.remove', sender(APP_PAGE), ['m1'])).toMatchObject({ ok: false, error: { code: 'invalid-request' } });
    expect(await ipc.invoke('lethe:models.list', sender(APP_PAGE))).toEqual({ ok: true, value: [] });
    expect(seen.map((s) => s.name)).toEqual(['models.list']);
  });

  it('the preload refuses channels and events outside the contract, without IPC', async () => {
    const ipc = new FakeIpcMain();
    const renderer = new FakeIpcRenderer(ipc);
    const api = createBridgeApi(renderer);
    const loose = api as unknown as { call(channel: string, params: unknown): Promise<unknown>; on(event: string, l: () => void): () => void };
    expect(await loose.call('fs.readFile', { path: '/etc/passwd' })).toMatchObject({ ok: false, error: { code: 'unknown-call' } });
    expect(await loose.call('__proto__', {})).toMatchObject({ ok: false, error: { code: 'unknown-call' } });
    expect(renderer.invoked).toEqual([]);
    expect(() => loose.on('ipc-message', () => {})).toThrow(TypeError);
    // A registered call that main does not answer (no handler) is still an ApiResult, not a throw.
    expect(await api.call('app.info', {})).toMatchObject({ ok: false, error: { code: 'ipc' } });
  });

  it('events: main forwards every EVENTS entry to lethe-event:<name>; listeners get the payload only; unsubscribe works', () => {
    const subs = new Map<string, (payload: unknown) => void>();
    const source: EventSource = {
      on: (event, listener) => {
        subs.set(event, listener as (payload: unknown) => void);
        return () => subs.delete(event);
      },
    };
    const ipc = new FakeIpcMain();
    const renderer = new FakeIpcRenderer(ipc);
    const stop = forwardEvents(source, (channel, payload) => renderer.emit(channel, payload));
    expect([...subs.keys()].sort()).toEqual([...EVENTS].sort());

    const api = createBridgeApi(renderer);
    const got: unknown[][] = [];
    const off = api.on('job.started', (...args) => got.push(args));
    subs.get('job.started')?.({ job });
    expect(got).toEqual([[{ job }]]);
    off();
    off();
    subs.get('job.started')?.({ job });
    expect(got).toHaveLength(1);
    expect(renderer.listeners.get(eventChannel('job.started'))?.size ?? 0).toBe(0);

    stop();
    expect(subs.size).toBe(0);
  });

  it('channel names', () => {
    expect(callChannel('history.search')).toBe('lethe:history.search');
    expect(eventChannel('job.progress')).toBe('lethe-event:job.progress');
  });
});

// --- (b) window options ---------------------------------------------------------------

describe('secureWindowOptions', () => {
  it('sandboxed, isolated, no Node, web security on, the given preload', () => {
    const o = secureWindowOptions('/app/dist/electron/preload.cjs');
    const w = o.webPreferences ?? {};
    expect(w.sandbox).toBe(true);
    expect(w.contextIsolation).toBe(true);
    expect(w.nodeIntegration).toBe(false);
    expect(w.nodeIntegrationInWorker).toBe(false);
    expect(w.nodeIntegrationInSubFrames).toBe(false);
    expect(w.webSecurity).toBe(true);
    expect(w.allowRunningInsecureContent).toBe(false);
    expect(w.experimentalFeatures).toBe(false);
    expect(w.webviewTag).toBe(false);
    expect(w.enableBlinkFeatures).toBeUndefined();
    expect(w.preload).toBe('/app/dist/electron/preload.cjs');
    expect(w.devTools).toBe(false);
    expect(secureWindowOptions('/p.cjs', { devTools: true }).webPreferences?.devTools).toBe(true);
  });
});

// --- (c) sender validation and navigation -------------------------------------------------

describe('sender validation', () => {
  it("accepts the app's own page, with any #route or ?query", () => {
    for (const url of [APP_PAGE, `${APP_PAGE}#/runs`, `${APP_PAGE}?x=1#/playground`]) expect(isTrustedSender(sender(url), APP_PAGE)).toBe(true);
    expect(isTrustedSender(sender('file:///c:/Program%20Files/Lethe/resources/app.asar/dist/renderer/index.html'), WIN_PAGE)).toBe(true);
  });

  it('rejects http(s), other files, other schemes, sub-frames and gone frames', () => {
    const rejected = [
      'http://localhost:5173/',
      'https://evil.example/index.html',
      'https://evil.example/opt/Lethe/resources/app.asar/dist/renderer/index.html',
      'file:///tmp/index.html',
      'file:///opt/Lethe/resources/app.asar/dist/renderer/other.html',
      'file:///opt/Lethe/resources/app.asar/dist/renderer/index.html/../../../../tmp/x.html',
      'file:///opt/Lethe/resources/app.asar/dist/renderer/index.htm',
      'file://evil-host/opt/Lethe/resources/app.asar/dist/renderer/index.html',
      'data:text/html,<h1>hi</h1>',
      'about:blank',
      'devtools://devtools/bundled/index.html',
      `${IMAGE_SCHEME}://images/x.png`,
      '',
      'not a url',
    ];
    for (const url of rejected) expect(isTrustedSender(sender(url), APP_PAGE), url).toBe(false);
    expect(isTrustedSender(sender(APP_PAGE, { url: 'https://evil.example/' }), APP_PAGE)).toBe(false);
    expect(isTrustedSender({ senderFrame: null }, APP_PAGE)).toBe(false);
    expect(isAppPage(undefined, APP_PAGE)).toBe(false);
  });

  it('navigation: only to the app page itself', () => {
    expect(isAllowedNavigation(`${APP_PAGE}#/models`, APP_PAGE)).toBe(true);
    expect(isAllowedNavigation('https://example.com/', APP_PAGE)).toBe(false);
    expect(isAllowedNavigation('file:///etc/passwd', APP_PAGE)).toBe(false);
  });
});

// --- (d) CSP --------------------------------------------------------------------------

describe('Content-Security-Policy', () => {
  const directives = (policy: string) => new Map(policy.split(';').map((d) => d.trim().split(/\s+/)).map(([name, ...sources]) => [name, sources]));

  it("is default-src 'self' with no remote source anywhere", () => {
    for (const policy of [CSP, CSP_META]) {
      const d = directives(policy);
      expect(d.get('default-src')).toEqual(["'self'"]);
      expect(d.get('script-src')).toEqual(["'self'"]);
      expect(d.get('object-src')).toEqual(["'none'"]);
      const allowed = new Set(["'self'", "'none'", "'unsafe-inline'", 'data:', 'blob:', `${IMAGE_SCHEME}:`]);
      for (const [name, sources] of d) {
        for (const s of sources) expect(allowed.has(s), `${name} ${s}`).toBe(true);
        expect(sources.length, name).toBeGreaterThan(0);
      }
      expect(policy).not.toMatch(/https?:|wss?:|\*|unsafe-eval|localhost|127\.0\.0\.1/);
    }
    expect(directives(CSP).get('frame-ancestors')).toEqual(["'none'"]);
    expect(directives(CSP_META).has('frame-ancestors')).toBe(false);
    expect(Object.keys(CSP_DIRECTIVES)).toContain('img-src');
  });
});

// --- images -----------------------------------------------------------------------------

describe('image URLs', () => {
  it('round-trip a file of the image folder', () => {
    const url = imageUrl('0f8e1c2a-4b6d-4e8f-9a1b-2c3d4e5f6a7b.png');
    expect(url).toBe('lethe-image://images/0f8e1c2a-4b6d-4e8f-9a1b-2c3d4e5f6a7b.png');
    expect(imageRequestPath(url)).toEqual({ segments: ['0f8e1c2a-4b6d-4e8f-9a1b-2c3d4e5f6a7b.png'], contentType: 'image/png' });
    expect(imageRequestPath(imageUrl('Grid A.PNG'))).toEqual({ segments: ['Grid A.PNG'], contentType: 'image/png' });
  });

  it('never name anything outside it, nor anything that is not an image', () => {
    const refused = [
      'lethe-image://images/../history.db',
      'lethe-image://images/%2e%2e/history.db',
      'lethe-image://images/..%2F..%2Fetc%2Fpasswd.png',
      'lethe-image://images/a%5C..%5C..%5Cx.png',
      'lethe-image://images/x.png%00.txt',
      'lethe-image://images/.hidden.png',
      'lethe-image://images/history.db',
      'lethe-image://images/C:%5Cwindows%5Cx.png',
      'lethe-image://other/x.png',
      'lethe-image://user:pw@images/x.png',
      'lethe-image://images/',
      'file:///etc/x.png',
      'https://images/x.png',
      'lethe-image://images/%E0%A4%A.png',
    ];
    for (const url of refused) expect(imageRequestPath(url), url).toBeNull();
  });
});
