/**
 * The web transport: the same API as the Electron IPC, over HTTP and a
 * WebSocket, so the studio runs in a browser (next to a headless GPU box,
 * or under end-to-end tests in Chromium).
 *
 * - `POST /api/<channel>`, JSON params in, JSON ApiResult out.
 * - `GET /api/events`: WebSocket pushing `{event, payload}` for every ApiEvents event.
 * - `GET /images/<file>`: PNGs of the data folder.
 * - Everything else: the built renderer (dist/renderer/), index.html at `/`.
 *
 * Access: a random 32-byte token. API calls and images carry it as
 * `Authorization: Bearer`; the page load and the WebSocket upgrade as
 * `?token=`. The page load sets an HttpOnly, SameSite=Strict cookie with it,
 * so the page's own scripts, styles and <img> tags load too. Requests whose
 * Host header is not this server's (DNS rebinding) are refused.
 */
import { randomBytes, createHash, timingSafeEqual } from 'node:crypto';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { Duplex } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { WebSocketServer, type WebSocket } from 'ws';
import { LetheError } from '../core/errors.ts';
import type { AppCore } from './app-core.ts';
import { CALLS, EVENTS, type ApiError, type ApiResult, type CallName } from './contract.ts';

export interface WebServerOptions {
  core: Pick<AppCore, 'handlers' | 'events'>;
  /** dataDir/images. */
  imagesDir: string;
  /** The built renderer (default: dist/renderer/ of the repository). */
  rendererDir?: string;
  /** Default 127.0.0.1. */
  host?: string;
  /** Default 0: any free port. */
  port?: number;
  /** Default: 32 random bytes, hex. */
  token?: string;
  /** More names the Host header may carry (e.g. a machine's DNS name when binding 0.0.0.0). */
  allowedHosts?: string[];
  log?: (message: string) => void;
}

export interface WebServer {
  /** The address to open, token included. */
  url: string;
  host: string;
  port: number;
  token: string;
  close(): Promise<void>;
}

/** The URL an image of dataDir/images is served at (relative to the page). */
export const webImageUrl = (file: string): string => `/images/${encodeURIComponent(file)}`;

const DEFAULT_RENDERER_DIR = fileURLToPath(new URL('../dist/renderer', import.meta.url));
const MAX_BODY_BYTES = 1 << 20;
const IMAGE_NAME = /^[A-Za-z0-9][A-Za-z0-9._-]*\.png$/;

const CONTENT_TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.map': 'application/json; charset=utf-8',
  '.svg': 'image/svg+xml',
  '.png': 'image/png',
  '.jpg': 'image/jpeg',
  '.webp': 'image/webp',
  '.ico': 'image/x-icon',
  '.woff2': 'font/woff2',
  '.woff': 'font/woff',
  '.txt': 'text/plain; charset=utf-8',
  '.wasm': 'application/wasm',
};

const NOT_BUILT_PAGE = `<!doctype html>
<meta charset="utf-8"><title>Lethe: studio not built</title>
<body style="font-family: system-ui, sans-serif; max-width: 40em; margin: 4em auto">
<h1>The studio UI is not built</h1>
<p>The server is running, but <code>dist/renderer/</code> holds no build of the studio.
Build it (<code>npx vite build</code>; <code>npm run serve</code> builds it before starting) and reload this page.</p>
</body>`;

export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || host.startsWith('127.');
}

const hostPort = (host: string, port: number): string => `${host.includes(':') ? `[${host}]` : host}:${port}`;

/** The Host header values that name this server. */
function allowedHostHeaders(host: string, port: number, extra: readonly string[]): Set<string> {
  const names = new Set<string>([host, 'localhost', ...extra]);
  if (host === '0.0.0.0' || host === '::') {
    names.add(os.hostname());
    for (const list of Object.values(os.networkInterfaces())) for (const a of list ?? []) names.add(a.address);
  }
  if (host === '127.0.0.1' || host === '::1') names.add(host === '::1' ? '127.0.0.1' : '::1');
  return new Set([...names].map((n) => hostPort(n, port).toLowerCase()));
}

function securityHeaders(res: ServerResponse, hostHeader: string): void {
  res.setHeader('Content-Security-Policy', `default-src 'self'; img-src 'self' data: blob:; connect-src 'self' ws://${hostHeader}; script-src 'self'; style-src 'self' 'unsafe-inline'`);
  res.setHeader('X-Content-Type-Options', 'nosniff');
  res.setHeader('Referrer-Policy', 'no-referrer');
  res.setHeader('X-Frame-Options', 'DENY');
}

function sendJson<T>(res: ServerResponse, status: number, result: ApiResult<T>): void {
  const body = JSON.stringify(result);
  res.writeHead(status, { 'Content-Type': 'application/json; charset=utf-8', 'Cache-Control': 'no-store', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
}

function sendText(res: ServerResponse, status: number, text: string, type = 'text/plain; charset=utf-8'): void {
  res.writeHead(status, { 'Content-Type': type, 'Cache-Control': 'no-store', 'Content-Length': Buffer.byteLength(text) });
  res.end(text);
}

const apiError = (code: string, message: string): ApiResult<never> => ({ ok: false, error: { code, message } });

function readBody(req: IncomingMessage): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    req.on('data', (chunk: Buffer) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        reject(new LetheError('too-large', `request body over ${MAX_BODY_BYTES} bytes`));
        req.destroy();
      } else chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function cookie(req: IncomingMessage, name: string): string | undefined {
  for (const part of (req.headers.cookie ?? '').split(';')) {
    const eq = part.indexOf('=');
    if (eq > 0 && part.slice(0, eq).trim() === name) return part.slice(eq + 1).trim();
  }
  return undefined;
}

function bearer(req: IncomingMessage): string | undefined {
  const m = /^Bearer\s+(\S+)$/i.exec(req.headers.authorization ?? '');
  return m?.[1];
}

/** The request target as a URL (path and query only; never read as an absolute URL). */
function requestUrl(req: IncomingMessage): URL {
  const target = req.url ?? '/';
  return new URL(`http://localhost${target.startsWith('/') ? target : `/${target}`}`);
}

/** A file under `root` for a URL path, or null when the path leaves it (traversal, NUL, bad escapes). */
function fileUnder(root: string, urlPath: string): string | null {
  let decoded: string;
  try {
    decoded = decodeURIComponent(urlPath);
  } catch {
    return null;
  }
  if (decoded.includes('\0') || decoded.split(/[\\/]/).includes('..')) return null;
  const file = path.resolve(root, `.${path.posix.normalize(`/${decoded}`)}`);
  return file.startsWith(root + path.sep) ? file : null;
}

export async function startWebServer(options: WebServerOptions): Promise<WebServer> {
  const log = options.log ?? ((m: string) => console.error(m));
  const host = options.host ?? '127.0.0.1';
  const token = options.token ?? randomBytes(32).toString('hex');
  const rendererDir = path.resolve(options.rendererDir ?? DEFAULT_RENDERER_DIR);
  const imagesDir = path.resolve(options.imagesDir);
  const digest = (s: string): Buffer => createHash('sha256').update(s).digest();
  const tokenDigest = digest(token);
  const tokenOk = (candidate: string | null | undefined): boolean => typeof candidate === 'string' && timingSafeEqual(digest(candidate), tokenDigest);
  let allowedHosts = new Set<string>();
  let cookieName = 'lethe_token';

  const handlers = options.core.handlers as unknown as Record<CallName, (params: unknown) => Promise<unknown>>;
  async function api(req: IncomingMessage, res: ServerResponse, channel: string): Promise<void> {
    if (!tokenOk(bearer(req))) return sendJson(res, 401, apiError('unauthorized', 'missing or wrong token: send Authorization: Bearer <token>'));
    if (channel === 'events') return sendJson(res, 426, apiError('upgrade-required', '/api/events is a WebSocket: connect with ?token=<token>'));
    if (!(CALLS as readonly string[]).includes(channel)) return sendJson(res, 404, apiError('unknown-channel', `no API call named '${channel}'`));
    if (req.method !== 'POST') {
      res.setHeader('Allow', 'POST');
      return sendJson(res, 405, apiError('method-not-allowed', 'API calls are POST requests'));
    }
    let params: unknown;
    try {
      const body = await readBody(req);
      params = body.trim() === '' ? {} : (JSON.parse(body) as unknown);
    } catch (e) {
      if (e instanceof LetheError) return sendJson(res, 413, apiError(e.code, e.message));
      return sendJson(res, 400, apiError('bad-request', `the request body is not valid JSON: ${(e as Error).message}`));
    }
    try {
      const value = await handlers[channel as CallName](params);
      sendJson(res, 200, { ok: true, value });
    } catch (e) {
      sendJson(res, 200, { ok: false, error: toApiError(e, channel) });
    }
  }

  function toApiError(e: unknown, channel: string): ApiError {
    if (e instanceof LetheError) return { code: e.code, message: e.message };
    log(`${channel} failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
    return { code: 'internal', message: 'Something went wrong inside Lethe; the details are in the server log.' };
  }

  function image(req: IncomingMessage, res: ServerResponse, name: string): void {
    if (!tokenOk(bearer(req) ?? cookie(req, cookieName))) return sendText(res, 401, 'unauthorized: missing or wrong token');
    let file: string;
    try {
      file = decodeURIComponent(name);
    } catch {
      return sendText(res, 400, 'bad image name');
    }
    if (!IMAGE_NAME.test(file) || file.includes('..')) return sendText(res, 400, 'bad image name');
    sendFile(res, path.join(imagesDir, file), 'private, max-age=31536000, immutable');
  }

  function sendFile(res: ServerResponse, file: string, cache: string): void {
    if (!existsSync(file) || !statSync(file).isFile()) return sendText(res, 404, 'not found');
    const body = readFileSync(file);
    res.writeHead(200, { 'Content-Type': CONTENT_TYPES[path.extname(file).toLowerCase()] ?? 'application/octet-stream', 'Content-Length': body.length, 'Cache-Control': cache });
    res.end(body);
  }

  function page(req: IncomingMessage, res: ServerResponse, url: URL): void {
    const isIndex = url.pathname === '/' || url.pathname === '/index.html';
    const given = url.searchParams.get('token') ?? bearer(req) ?? cookie(req, cookieName);
    if (!tokenOk(given)) return sendText(res, 401, isIndex ? 'unauthorized: open the URL with ?token=... that `npm run serve` printed' : 'unauthorized');
    if (req.method !== 'GET' && req.method !== 'HEAD') return sendText(res, 405, 'method not allowed');
    const index = path.join(rendererDir, 'index.html');
    if (!existsSync(index)) return sendText(res, 503, NOT_BUILT_PAGE, 'text/html; charset=utf-8');
    if (isIndex) {
      res.setHeader('Set-Cookie', `${cookieName}=${token}; HttpOnly; SameSite=Strict; Path=/`);
      return sendFile(res, index, 'no-store');
    }
    const file = fileUnder(rendererDir, url.pathname);
    if (!file) return sendText(res, 400, 'bad path');
    sendFile(res, file, 'no-cache');
  }

  const server = createServer((req, res) => {
    const hostHeader = (req.headers.host ?? '').toLowerCase();
    if (!allowedHosts.has(hostHeader)) return sendText(res, 403, `refused: Host '${hostHeader}' is not this server (${[...allowedHosts][0]})`);
    securityHeaders(res, hostHeader);
    const url = requestUrl(req);
    const route = /^\/(api|images)\/(.*)$/.exec(url.pathname);
    if (route?.[1] === 'images') return image(req, res, route[2]);
    if (route?.[1] !== 'api') return page(req, res, url);
    api(req, res, route[2]).catch((e: unknown) => {
      log(`request failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`);
      if (!res.headersSent) sendJson(res, 500, apiError('internal', 'internal error'));
    });
  });

  // --- events over WebSocket
  const wss = new WebSocketServer({ noServer: true, maxPayload: 64 * 1024 });
  const clients = new Set<WebSocket>();
  const refuse = (socket: Duplex, status: string): void => {
    socket.end(`HTTP/1.1 ${status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n`);
  };
  server.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    const hostHeader = (req.headers.host ?? '').toLowerCase();
    const url = requestUrl(req);
    if (!allowedHosts.has(hostHeader)) return refuse(socket, '403 Forbidden');
    const origin = req.headers.origin;
    if (origin !== undefined && !allowedHosts.has(origin.replace(/^https?:\/\//, '').toLowerCase())) return refuse(socket, '403 Forbidden');
    if (!tokenOk(url.searchParams.get('token') ?? bearer(req))) return refuse(socket, '401 Unauthorized');
    if (url.pathname !== '/api/events') return refuse(socket, '404 Not Found');
    wss.handleUpgrade(req, socket, head, (ws) => {
      clients.add(ws);
      ws.on('close', () => clients.delete(ws));
      ws.on('error', () => clients.delete(ws));
    });
  });
  const unsubscribe = EVENTS.map((event) =>
    options.core.events.on(event, (payload) => {
      const message = JSON.stringify({ event, payload });
      for (const ws of clients) if (ws.readyState === ws.OPEN) ws.send(message);
    }),
  );

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const port = (server.address() as AddressInfo).port;
  allowedHosts = allowedHostHeaders(host, port, options.allowedHosts ?? []);
  cookieName = `lethe_token_${port}`;
  if (!isLoopback(host)) {
    log(`warning: serving on ${host}, which other machines can reach. Anyone with the token can use this studio and read its images; prefer 127.0.0.1 with an SSH tunnel (ssh -L ${port}:127.0.0.1:${port} ...).`);
  }
  const shownHost = host === '0.0.0.0' || host === '::' ? os.hostname() : host;

  let closed: Promise<void> | null = null;
  return {
    url: `http://${hostPort(shownHost, port)}/?token=${token}`,
    host,
    port,
    token,
    close: () =>
      (closed ??= new Promise<void>((resolve) => {
        for (const off of unsubscribe) off();
        for (const ws of clients) ws.close(1001, 'server shutting down');
        wss.close();
        server.close(() => resolve());
        server.closeIdleConnections();
        setTimeout(() => server.closeAllConnections(), 2000).unref();
      })),
  };
}
