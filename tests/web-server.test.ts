/**
 * The studio over HTTP + WebSocket: token and Host checks, static files,
 * the model library, generation jobs (events, PNGs, history, cancel, A/B
 * grids, failures), and what survives a shutdown or a SIGKILL mid-job.
 */
import { spawn, type ChildProcessWithoutNullStreams } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { decode } from 'fast-png';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { readPngParameters, parseParameters } from '../core/diffusion/png.ts';
import { HistoryStore } from '../core/store/history.ts';
import { createAppCore, type AppCore } from '../electron/app-core.ts';
import type { ApiEvents, ApiResult, CallName, CallParams, CallResult, EventName, GenerationRecord, JobInfo, ModelInfo } from '../electron/contract.ts';
import { startWebServer, webImageUrl, type WebServer } from '../electron/web-server.ts';
import { writeDiffusersFolder } from './helpers/model-dirs.ts';
import { hasShared } from './helpers/shared.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));

// --- helpers -------------------------------------------------------------------------

interface RawResponse {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: Buffer;
}

/** An HTTP request sent as written (the path is not normalised, the Host header can be anything). */
function request(port: number, target: string, options: { method?: string; headers?: Record<string, string>; body?: string; setHost?: boolean } = {}): Promise<RawResponse> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path: target, method: options.method ?? 'GET', headers: options.headers, setHost: options.setHost ?? true }, (res) => {
      const chunks: Buffer[] = [];
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body: Buffer.concat(chunks) }));
    });
    req.on('error', reject);
    req.end(options.body);
  });
}

const bearer = (token: string): Record<string, string> => ({ Authorization: `Bearer ${token}` });

interface Client {
  port: number;
  token: string;
}

async function call<K extends CallName>(c: Client, channel: K, params: CallParams<K>): Promise<ApiResult<CallResult<K>>> {
  const res = await request(c.port, `/api/${channel}`, { method: 'POST', headers: { ...bearer(c.token), 'Content-Type': 'application/json' }, body: JSON.stringify(params) });
  expect(res.status).toBe(200);
  return JSON.parse(res.body.toString('utf8')) as ApiResult<CallResult<K>>;
}

async function ok<K extends CallName>(c: Client, channel: K, params: CallParams<K>): Promise<CallResult<K>> {
  const r = await call(c, channel, params);
  if (!r.ok) throw new Error(`${channel} failed: ${r.error.code}: ${r.error.message}`);
  return r.value;
}

/** Opens the event socket, or says with which HTTP status it was refused. */
function connect(port: number, query: string, headers: Record<string, string> = {}): Promise<WebSocket | number> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/api/events${query}`, { headers });
    ws.once('open', () => resolve(ws));
    ws.once('unexpected-response', (_req, res) => {
      resolve(res.statusCode ?? 0);
      ws.terminate();
    });
    ws.once('error', reject);
  });
}

interface Pushed {
  event: EventName;
  payload: unknown;
}

/** Every event the socket received, and waiting for the next one that matches. */
class EventLog {
  readonly seen: Pushed[] = [];
  private readonly waiters: { test: (m: Pushed) => boolean; resolve: (m: Pushed) => void }[] = [];

  constructor(ws: WebSocket) {
    ws.on('message', (data: Buffer) => {
      const m = JSON.parse(data.toString('utf8')) as Pushed;
      this.seen.push(m);
      for (const w of [...this.waiters]) {
        if (w.test(m)) {
          this.waiters.splice(this.waiters.indexOf(w), 1);
          w.resolve(m);
        }
      }
    });
  }

  of<E extends EventName>(event: E, jobId?: string): ApiEvents[E][] {
    return this.seen.filter((m) => m.event === event && (!jobId || jobOf(m) === jobId)).map((m) => m.payload as ApiEvents[E]);
  }

  /** The first event (already seen or still to come) that matches. */
  async next<E extends EventName>(event: E, match: (p: ApiEvents[E]) => boolean = () => true, timeoutMs = 90_000): Promise<ApiEvents[E]> {
    const test = (m: Pushed): boolean => m.event === event && match(m.payload as ApiEvents[E]);
    const hit = this.seen.find(test);
    if (hit) return hit.payload as ApiEvents[E];
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no ${event} event within ${timeoutMs} ms`)), timeoutMs);
      this.waiters.push({ test, resolve: (m) => (clearTimeout(timer), resolve(m.payload as ApiEvents[E])) });
    });
  }

  finished(jobId: string): Promise<JobInfo> {
    return this.next('job.finished', (p) => p.job.id === jobId).then((p) => p.job);
  }
}

function jobOf(m: Pushed): string | undefined {
  const p = m.payload as { jobId?: string; job?: JobInfo };
  return p.jobId ?? p.job?.id;
}

const small = { steps: 3, guidance: 7.5, width: 16, height: 16 };

// --- one server over one data folder ----------------------------------------------

describe.skipIf(!hasShared)('the web transport', () => {
  let tmp = '';
  let dataDir = '';
  let core: AppCore;
  let server: WebServer;
  let events: EventLog;
  let socket: WebSocket;
  let c: Client;
  const models: { a?: ModelInfo; b?: ModelInfo } = {};

  beforeAll(async () => {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'lethe-web-'));
    writeDiffusersFolder(path.join(tmp, 'model-a'));
    writeDiffusersFolder(path.join(tmp, 'model-b'));
    const renderer = path.join(tmp, 'renderer');
    mkdirSync(path.join(renderer, 'assets'), { recursive: true });
    writeFileSync(path.join(renderer, 'index.html'), '<!doctype html><title>Lethe</title><script type="module" src="/assets/app.js"></script>');
    writeFileSync(path.join(renderer, 'assets', 'app.js'), 'console.log("studio")');
    dataDir = path.join(tmp, 'data');
    core = createAppCore({ dataDir, transport: 'web', imageUrl: webImageUrl, provider: 'cpu', builtInModelsDir: path.join(tmp, 'no-models'), log: () => undefined });
    server = await startWebServer({ core, imagesDir: path.join(dataDir, 'images'), rendererDir: renderer, port: 0, log: () => undefined });
    c = { port: server.port, token: server.token };
    const ws = await connect(server.port, `?token=${server.token}`);
    if (typeof ws === 'number') throw new Error(`event socket refused: ${ws}`);
    socket = ws;
    events = new EventLog(ws);
  });

  afterAll(async () => {
    socket?.close();
    await server?.close();
    await core?.close();
    rmSync(tmp, { recursive: true, force: true });
  });

  it('prints a loopback URL with a 32-byte token', () => {
    expect(server.url).toBe(`http://127.0.0.1:${server.port}/?token=${server.token}`);
    expect(server.token).toMatch(/^[0-9a-f]{64}$/);
  });

  it('answers 401 to API calls, images, the page and the event socket without the right token', async () => {
    const wrong = 'f'.repeat(64);
    for (const headers of [{}, bearer(wrong), { Authorization: server.token }]) {
      const api = await request(c.port, '/api/models.list', { method: 'POST', headers, body: '{}' });
      expect(api.status).toBe(401);
      expect(JSON.parse(api.body.toString())).toMatchObject({ ok: false, error: { code: 'unauthorized' } });
      expect((await request(c.port, '/images/x.png', { headers })).status).toBe(401);
    }
    // The token in the query does not open the API or the images: those take the header.
    expect((await request(c.port, `/api/models.list?token=${server.token}`, { method: 'POST', body: '{}' })).status).toBe(401);
    expect((await request(c.port, `/images/x.png?token=${server.token}`)).status).toBe(401);
    for (const target of ['/', `/?token=${wrong}`, '/?token=', '/index.html', '/assets/app.js']) expect((await request(c.port, target)).status).toBe(401);
    expect(await connect(c.port, '')).toBe(401);
    expect(await connect(c.port, `?token=${wrong}`)).toBe(401);
    const good = await connect(c.port, `?token=${server.token}`);
    expect(good).toBeInstanceOf(WebSocket);
    (good as WebSocket).close();
  });

  it('serves the page with ?token=, then its assets by cookie, with a strict CSP', async () => {
    const page = await request(c.port, `/?token=${server.token}`);
    expect(page.status).toBe(200);
    expect(page.body.toString()).toContain('<title>Lethe</title>');
    expect(page.headers['content-security-policy']).toBe(`default-src 'self'; img-src 'self' data: blob:; connect-src 'self' ws://127.0.0.1:${c.port}; script-src 'self'; style-src 'self' 'unsafe-inline'`);
    expect(page.headers['x-content-type-options']).toBe('nosniff');
    const setCookie = page.headers['set-cookie']?.[0] ?? '';
    expect(setCookie).toMatch(/HttpOnly/);
    expect(setCookie).toMatch(/SameSite=Strict/);
    const asset = await request(c.port, '/assets/app.js', { headers: { Cookie: setCookie.split(';')[0] } });
    expect(asset.status).toBe(200);
    expect(asset.headers['content-type']).toMatch(/javascript/);
    expect((await request(c.port, '/assets/app.js', { headers: { Cookie: `${setCookie.split('=')[0]}=${'0'.repeat(64)}` } })).status).toBe(401);

    // Not built: a page that says how to build it.
    const bare = await startWebServer({ core, imagesDir: path.join(dataDir, 'images'), rendererDir: path.join(tmp, 'not-built'), port: 0, log: () => undefined });
    try {
      const r = await request(bare.port, `/?token=${bare.token}`);
      expect(r.status).toBe(503);
      expect(r.body.toString()).toMatch(/not built[\s\S]*vite build/);
      expect((await request(bare.port, `/?token=${server.token}`)).status).toBe(401);
    } finally {
      await bare.close();
    }
  });

  it('refuses requests whose Host header is not this server (DNS rebinding)', async () => {
    for (const host of ['evil.example', `evil.example:${c.port}`, `127.0.0.1:${c.port + 1}`, `127.0.0.1.evil.example:${c.port}`]) {
      const r = await request(c.port, '/api/models.list', { method: 'POST', headers: { ...bearer(c.token), Host: host }, body: '{}' });
      expect(r.status, host).toBe(403);
      expect((await request(c.port, `/?token=${c.token}`, { headers: { Host: host } })).status).toBe(403);
    }
    // No Host header at all: Node's HTTP parser already answers 400.
    expect([400, 403]).toContain((await request(c.port, `/?token=${c.token}`, { setHost: false })).status);
    expect(await connect(c.port, `?token=${c.token}`, { Host: `evil.example:${c.port}` })).toBe(403);
    expect(await connect(c.port, `?token=${c.token}`, { Origin: 'http://evil.example' })).toBe(403);
    const local = await request(c.port, '/api/models.list', { method: 'POST', headers: { ...bearer(c.token), Host: `localhost:${c.port}` }, body: '{}' });
    expect(local.status).toBe(200);
  });

  it('refuses paths that leave the image and page folders', async () => {
    writeFileSync(path.join(tmp, 'secret.png'), 'not for the web');
    const targets = ['/images/../history.db', '/images/..%2fhistory.db', '/images/%2e%2e%2fhistory.db', '/images/..%2f..%2fsecret.png', '/images/%2e%2e%5csecret.png', '/images/x%00.png', '/..%2f..%2fsecret.png', '/assets/..%2f..%2f..%2fsecret.png', '/%2e%2e/%2e%2e/secret.png'];
    for (const target of targets) {
      const r = await request(c.port, target, { headers: { ...bearer(c.token) } });
      expect([400, 404], target).toContain(r.status);
      expect(r.body.toString()).not.toMatch(/SQLite format|not for the web/);
    }
  });

  it('models.add validates a folder, refuses duplicates and bogus paths with readable errors', async () => {
    const a = await call(c, 'models.add', { path: path.join(tmp, 'model-a'), name: 'Tiny A' });
    expect(a).toMatchObject({ ok: true, value: { name: 'Tiny A', layout: 'diffusers', builtIn: false, defaultSize: 32, sizeStep: 4, path: path.join(tmp, 'model-a') } });
    models.a = (a as { value: ModelInfo }).value;
    models.b = await ok(c, 'models.add', { path: path.join(tmp, 'model-b') });
    expect(models.b.name).toBe('model-b');

    const again = await call(c, 'models.add', { path: path.join(tmp, 'model-a', '.') });
    expect(again).toMatchObject({ ok: false, error: { code: 'duplicate-model' } });
    expect(!again.ok && again.error.message).toMatch(/already in the library as "Tiny A"/);

    const bogus = await call(c, 'models.add', { path: path.join(tmp, 'no-such-model') });
    expect(bogus).toMatchObject({ ok: false, error: { code: 'file-format' } });
    expect(!bogus.ok && bogus.error.message).toMatch(/not found.*diffusers model folder or a \.safetensors/);
    writeFileSync(path.join(tmp, 'notes.txt'), 'hello');
    const text = await call(c, 'models.add', { path: path.join(tmp, 'notes.txt') });
    expect(text).toMatchObject({ ok: false, error: { code: 'file-format' } });
    expect(!text.ok && text.error.message).toMatch(/Stable Diffusion 1\.x/);

    expect((await ok(c, 'models.list', {})).map((m) => m.name)).toEqual(['Tiny A', 'model-b']);
    expect(await ok(c, 'app.info', {})).toMatchObject({ transport: 'web', defaultModelId: models.a.id, dataDir });
    expect(await ok(c, 'models.pick', {})).toBeNull();
  });

  it('answers unknown channels, bad JSON and invalid requests with ApiErrors', async () => {
    const unknown = await request(c.port, '/api/models.explode', { method: 'POST', headers: bearer(c.token), body: '{}' });
    expect(unknown.status).toBe(404);
    expect(JSON.parse(unknown.body.toString())).toMatchObject({ ok: false, error: { code: 'unknown-channel' } });
    const bad = await request(c.port, '/api/models.list', { method: 'POST', headers: bearer(c.token), body: '{"oops' });
    expect(bad.status).toBe(400);
    expect(JSON.parse(bad.body.toString())).toMatchObject({ ok: false, error: { code: 'bad-request' } });
    const id = models.a!.id;
    const invalid: [Partial<CallParams<'generate.start'>>, RegExp][] = [
      [{ width: 18 }, /width 18 must be a multiple of 4/],
      [{ steps: 0 }, /steps must be an integer from 1 to 1000/],
      [{ steps: 1001 }, /steps/],
      [{ seeds: [1.5] }, /seeds\[0\] must be an integer/],
      [{ seeds: [] }, /seeds must be a non-empty list/],
      [{ seeds: Array.from({ length: 300 }, (_, i) => i) }, /at most 256/],
      [{ modelId: 'nope' }, /no model with id 'nope'/],
    ];
    for (const [change, message] of invalid) {
      const r = await call(c, 'generate.start', { modelId: id, prompt: 'x', seeds: [1], ...small, ...change });
      expect(r.ok).toBe(false);
      expect(!r.ok && r.error.message).toMatch(message);
    }
    const ab = await call(c, 'ab.start', { modelIds: [id, id], prompts: [], seeds: [1], ...small });
    expect(ab).toMatchObject({ ok: false, error: { code: 'invalid-request' } });
    const history = await call(c, 'history.get', { id: 'missing' });
    expect(history).toMatchObject({ ok: false, error: { code: 'not-found' } });
  });

  it('runs a generate job: events over the socket, PNGs on disk, rows in history', async () => {
    const { jobId } = await ok(c, 'generate.start', { modelId: models.a!.id, prompt: 'a photo of a lighthouse', negativePrompt: 'blurry', seeds: [7, 8], ...small });
    const finished = await events.finished(jobId);
    expect(finished).toMatchObject({ id: jobId, kind: 'generate', state: 'done', done: 2, total: 2 });
    const order = events.seen.filter((m) => jobOf(m) === jobId).map((m) => m.event);
    expect(order[0]).toBe('job.queued');
    expect(order[1]).toBe('job.started');
    expect(order.at(-1)).toBe('job.finished');
    expect(order.filter((e) => e === 'job.image')).toHaveLength(2);
    const progress = events.of('job.progress', jobId);
    expect(progress.map((p) => [p.image, p.step])).toEqual([[0, 1], [0, 2], [0, 3], [1, 1], [1, 2], [1, 3]]);
    expect(progress.every((p) => p.images === 2 && p.steps === 3 && p.etaMs >= 0)).toBe(true);

    const images = events.of('job.image', jobId).map((p) => p.generation);
    expect(images.map((g) => g.seed)).toEqual([7, 8]);
    for (const g of images) {
      expect(g).toMatchObject({ jobId, modelId: models.a!.id, modelName: 'Tiny A', prompt: 'a photo of a lighthouse', negativePrompt: 'blurry', steps: 3, width: 16, height: 16, image: `${g.id}.png`, imageUrl: `/images/${g.id}.png` });
      expect(g.grid).toBeUndefined();
      const png = readFileSync(path.join(dataDir, 'images', g.image));
      expect(decode(png)).toMatchObject({ width: 16, height: 16 });
      expect(parseParameters(readPngParameters(png)!)).toMatchObject({ prompt: 'a photo of a lighthouse', negativePrompt: 'blurry', fields: { Steps: '3', Seed: String(g.seed), Size: '16x16', Model: 'Tiny A' } });
      const served = await request(c.port, g.imageUrl, { headers: bearer(c.token) });
      expect(served.status).toBe(200);
      expect(served.headers['content-type']).toBe('image/png');
      expect(served.body.equals(png)).toBe(true);
    }
    const found = await ok(c, 'history.search', { query: 'lighthouse' });
    expect(found.total).toBe(2);
    expect(found.items.map((g) => g.id).sort()).toEqual(images.map((g) => g.id).sort());
    expect((await ok(c, 'history.search', { query: '8' })).items.map((g) => g.seed)).toContain(8);
    expect(await ok(c, 'history.get', { id: images[0].id })).toEqual(images[0]);
    expect((await ok(c, 'jobs.list', {})).find((j) => j.id === jobId)).toMatchObject({ state: 'done', done: 2 });
  });

  it("cancels: 'now' between steps, 'after-image' after the current image, a queued job before it starts", async () => {
    const long = { modelId: models.a!.id, prompt: 'a long one', seeds: [1, 2, 3], ...small, steps: 900 };
    const { jobId } = await ok(c, 'generate.start', long);
    const { jobId: queuedId } = await ok(c, 'generate.start', { ...long, prompt: 'never runs' });
    expect((await events.next('job.queued', (p) => p.job.id === queuedId)).position).toBe(1);
    await events.next('job.progress', (p) => p.jobId === jobId && p.step >= 2);
    expect(await ok(c, 'jobs.cancel', { jobId: queuedId, mode: 'now' })).toEqual({ cancelled: true });
    expect(await events.finished(queuedId)).toMatchObject({ state: 'cancelled', done: 0 });
    expect(await ok(c, 'jobs.cancel', { jobId, mode: 'now' })).toEqual({ cancelled: true });
    const job = await events.finished(jobId);
    expect(job).toMatchObject({ state: 'cancelled', done: 0, total: 3 });
    expect(events.of('job.progress', jobId).at(-1)!.step).toBeLessThan(900);
    expect(events.of('job.started', queuedId)).toHaveLength(0);

    const { jobId: afterId } = await ok(c, 'generate.start', { ...long, prompt: 'one image only', steps: 300 });
    await events.next('job.progress', (p) => p.jobId === afterId && p.step >= 1);
    expect(await ok(c, 'jobs.cancel', { jobId: afterId, mode: 'after-image' })).toEqual({ cancelled: true });
    expect(await events.finished(afterId)).toMatchObject({ state: 'cancelled', done: 1, total: 3 });
    expect((await ok(c, 'history.search', { query: 'one image only' })).total).toBe(1);
    expect(await ok(c, 'jobs.cancel', { jobId: afterId, mode: 'now' })).toEqual({ cancelled: false });
  });

  it('runs an A/B grid: rows x columns x 2 images, identical seeds for both models, grid positions kept', async () => {
    const prompts = ['a red barn', 'a blue boat'];
    const seeds = [11, 12, 13];
    const { jobId } = await ok(c, 'ab.start', { modelIds: [models.a!.id, models.b!.id], prompts, seeds, ...small, steps: 2 });
    expect(await events.finished(jobId)).toMatchObject({ kind: 'ab-grid', state: 'done', done: 12, total: 12 });
    const images = events.of('job.image', jobId).map((p) => p.generation);
    expect(images).toHaveLength(prompts.length * seeds.length * 2);
    for (const [row, prompt] of prompts.entries()) {
      for (const [column, seed] of seeds.entries()) {
        const cell = images.filter((g) => g.grid?.row === row && g.grid.column === column);
        expect(cell.map((g) => g.modelName).sort()).toEqual(['Tiny A', 'model-b']);
        expect(cell.every((g) => g.prompt === prompt && g.seed === seed)).toBe(true);
        // Same weights in both folders: the same seed gives the same pixels.
        const [x, y] = cell.map((g) => readFileSync(path.join(dataDir, 'images', g.image)));
        expect(Buffer.from(decode(x).data).equals(Buffer.from(decode(y).data))).toBe(true);
      }
    }
    const stored = await ok(c, 'history.search', { query: 'a red barn' });
    expect(stored.items.map((g) => g.grid).filter(Boolean)).toHaveLength(6);
  });

  it('fails a job whose model files are gone, with the ApiError, and goes on with the queue', async () => {
    const gone = await ok(c, 'models.add', { path: writeDiffusersFolder(path.join(tmp, 'model-c')) });
    const first = await ok(c, 'generate.start', { modelId: models.a!.id, prompt: 'before', seeds: [1], ...small, steps: 150 });
    const broken = await ok(c, 'generate.start', { modelId: gone.id, prompt: 'broken', seeds: [1], ...small });
    const after = await ok(c, 'generate.start', { modelId: models.a!.id, prompt: 'after', seeds: [1], ...small });
    rmSync(path.join(tmp, 'model-c'), { recursive: true });
    const failed = await events.finished(broken.jobId);
    expect(failed).toMatchObject({ state: 'failed', done: 0, error: { code: 'file-format' } });
    expect(failed.error!.message).toMatch(/model-c.*not found/);
    expect(await events.finished(first.jobId)).toMatchObject({ state: 'done' });
    expect(await events.finished(after.jobId)).toMatchObject({ state: 'done', done: 1 });
    expect((await ok(c, 'jobs.list', {})).find((j) => j.id === broken.jobId)?.error?.code).toBe('file-format');
    // Starting another job on it now is refused up front.
    const refused = await call(c, 'generate.start', { modelId: gone.id, prompt: 'x', seeds: [1], ...small });
    expect(refused).toMatchObject({ ok: false, error: { code: 'model-missing' } });
  });
});

// --- shutdown and restart ------------------------------------------------------------

describe.skipIf(!hasShared)('restarting over the same data folder', () => {
  let tmp = '';
  let modelDir = '';
  beforeAll(() => {
    tmp = mkdtempSync(path.join(os.tmpdir(), 'lethe-restart-'));
    modelDir = writeDiffusersFolder(path.join(tmp, 'model'));
  });
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));

  const open = (dataDir: string): AppCore => createAppCore({ dataDir, transport: 'web', imageUrl: webImageUrl, provider: 'cpu', builtInModelsDir: path.join(tmp, 'none'), log: () => undefined });

  function nextEvent<E extends EventName>(core: AppCore, event: E, match: (p: ApiEvents[E]) => boolean): Promise<ApiEvents[E]> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no ${event} event within 60 s`)), 60_000);
      const off = core.events.on(event, (p) => {
        if (match(p)) {
          off();
          clearTimeout(timer);
          resolve(p);
        }
      });
    });
  }

  it('close() mid-job leaves the job to show as interrupted; earlier images stay listed', async () => {
    const dataDir = path.join(tmp, 'data');
    const core = open(dataDir);
    const model = await core.handlers['models.add']({ path: modelDir });
    const { jobId: doneId } = await core.handlers['generate.start']({ modelId: model.id, prompt: 'kept', seeds: [1, 2], ...small });
    await nextEvent(core, 'job.finished', (p) => p.job.id === doneId);
    const long = await core.handlers['generate.start']({ modelId: model.id, prompt: 'cut short', seeds: [1, 2, 3], ...small, steps: 900 });
    const firstImage = await nextEvent(core, 'job.image', (p) => p.jobId === long.jobId);
    await nextEvent(core, 'job.progress', (p) => p.jobId === long.jobId && p.image === 1);
    await core.close();

    const again = open(dataDir);
    try {
      const jobs = await again.handlers['jobs.list']({});
      expect(jobs.find((j) => j.id === long.jobId)).toMatchObject({ state: 'interrupted', done: 1, total: 3 });
      expect(jobs.find((j) => j.id === doneId)).toMatchObject({ state: 'done', done: 2 });
      const listed = await again.handlers['history.search']({});
      expect(listed.total).toBe(3);
      expect(listed.items.map((g: GenerationRecord) => g.id)).toContain(firstImage.generation.id);
      for (const g of listed.items) expect(existsSync(path.join(dataDir, 'images', g.image))).toBe(true);
      expect((await again.handlers['models.list']({})).map((m) => m.id)).toEqual([model.id]);
    } finally {
      await again.close();
    }
  });

  it('offers models/lethe-mini as the built-in default model, and follows it when the app folder moves', async () => {
    const dataDir = path.join(tmp, 'built-in');
    const before = writeDiffusersFolder(path.join(tmp, 'app-1', 'models', 'lethe-mini'));
    const withModels = (dir: string): AppCore => createAppCore({ dataDir, transport: 'web', imageUrl: webImageUrl, builtInModelsDir: dir, log: () => undefined });
    let core = withModels(path.join(tmp, 'app-1', 'models'));
    try {
      expect(await core.handlers['models.list']({})).toMatchObject([{ id: 'lethe-mini', name: 'Lethe mini', builtIn: true, path: before, sizeStep: 4 }]);
      expect((await core.handlers['app.info']({})).defaultModelId).toBe('lethe-mini');
      await expect(core.handlers['models.remove']({ id: 'lethe-mini' })).rejects.toThrow(/built-in model .* cannot be removed/);
    } finally {
      await core.close();
    }
    const after = writeDiffusersFolder(path.join(tmp, 'app-2', 'models', 'lethe-mini'));
    core = withModels(path.join(tmp, 'app-2', 'models'));
    try {
      expect(await core.handlers['models.list']({})).toMatchObject([{ id: 'lethe-mini', builtIn: true, path: after }]);
    } finally {
      await core.close();
    }
  });

  /** `npm run serve` as a child process; resolves with its URL once it printed it. */
  function serve(dataDir: string): Promise<{ child: ChildProcessWithoutNullStreams; client: Client; stderr: () => string }> {
    const child = spawn(process.execPath, ['--import', 'tsx', 'electron/serve.ts', '--port', '0', '--data-dir', dataDir, '--provider', 'cpu'], { cwd: ROOT });
    let out = '';
    let err = '';
    child.stderr.on('data', (d: Buffer) => (err += d.toString()));
    return new Promise((resolve, reject) => {
      child.stdout.on('data', (d: Buffer) => {
        out += d.toString();
        const m = /Lethe studio: http:\/\/127\.0\.0\.1:(\d+)\/\?token=([0-9a-f]{64})/.exec(out);
        if (m) resolve({ child, client: { port: Number(m[1]), token: m[2] }, stderr: () => err });
      });
      child.once('exit', (code) => reject(new Error(`serve exited (${code}) before printing its URL: ${err}`)));
    });
  }

  const exited = (child: ChildProcessWithoutNullStreams): Promise<number | null> =>
    child.exitCode !== null ? Promise.resolve(child.exitCode) : new Promise((resolve) => child.once('exit', (code) => resolve(code)));

  it('SIGKILL mid-job: after a restart the job is interrupted, the database intact, every finished image listed', async () => {
    const dataDir = path.join(tmp, 'killed');
    const first = await serve(dataDir);
    let seen: string[] = [];
    let longJob = '';
    try {
      const socket = await connect(first.client.port, `?token=${first.client.token}`);
      if (typeof socket === 'number') throw new Error(`socket refused: ${socket}`);
      const log = new EventLog(socket);
      const model = await ok(first.client, 'models.add', { path: modelDir });
      const { jobId } = await ok(first.client, 'generate.start', { modelId: model.id, prompt: 'before the crash', seeds: [5, 6], ...small });
      await log.finished(jobId);
      longJob = (await ok(first.client, 'generate.start', { modelId: model.id, prompt: 'during the crash', seeds: [1, 2, 3, 4], ...small, steps: 800 })).jobId;
      await log.next('job.image', (p) => p.jobId === longJob);
      await log.next('job.progress', (p) => p.jobId === longJob && p.image === 1 && p.step >= 5);
      seen = log.of('job.image').map((p) => p.generation.id);
      expect(seen).toHaveLength(3);
      socket.terminate();
    } finally {
      first.child.kill('SIGKILL');
      await exited(first.child);
    }

    const second = await serve(dataDir);
    try {
      const jobs = await ok(second.client, 'jobs.list', {});
      expect(jobs.find((j) => j.id === longJob)).toMatchObject({ state: 'interrupted', done: 1, total: 4 });
      const listed = await ok(second.client, 'history.search', {});
      expect(listed.items.map((g) => g.id).sort()).toEqual([...seen].sort());
      for (const g of listed.items) {
        const png = await request(second.client.port, g.imageUrl, { headers: bearer(second.client.token) });
        expect(png.status).toBe(200);
      }
    } finally {
      second.child.kill('SIGTERM');
    }
    expect(await exited(second.child)).toBe(0);
    const store = HistoryStore.open(path.join(dataDir, 'history.db'));
    try {
      expect(store.integrityCheck()).toBe('ok');
    } finally {
      store.close();
    }
  });
});
