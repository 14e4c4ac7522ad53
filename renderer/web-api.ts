/**
 * LetheApi over HTTP + WebSocket, for the studio served by `lethe serve`:
 * - a call is `POST /api/<channel>` with the params as JSON; the body of the
 *   answer is the call's `ApiResult`, whatever the HTTP status;
 * - events arrive on the WebSocket `/api/events` as JSON `{ event, payload }`;
 * - the token goes in `Authorization: Bearer <token>` on calls and in
 *   `?token=` on the WebSocket URL (browsers cannot set its headers).
 * Calls never throw: a network or server failure is an `ApiResult` error with
 * code 'transport' (or 'unauthorized'). The socket reconnects with backoff.
 */
import type { ApiError, ApiEvents, ApiResult, CallName, CallParams, CallResult, EventName, LetheApi } from '../electron/contract.ts';

export interface WebApiOptions {
  /** Origin the API is served from, e.g. `location.origin`. */
  origin: string;
  token: string | null;
  /** Told when the event socket opens (true) or drops (false). */
  onConnectionChange?: (connected: boolean) => void;
  fetch?: typeof fetch;
  WebSocket?: typeof WebSocket;
}

type Listener = (payload: unknown) => void;

const FIRST_RETRY_MS = 500;
const MAX_RETRY_MS = 10_000;

export function createWebApi(options: WebApiOptions): LetheApi {
  const doFetch = options.fetch ?? globalThis.fetch.bind(globalThis);
  const Socket = options.WebSocket ?? globalThis.WebSocket;
  const listeners = new Map<EventName, Set<Listener>>();
  let socket: WebSocket | null = null;
  let retries = 0;
  let retryTimer: ReturnType<typeof setTimeout> | null = null;

  function callUrl(channel: CallName): string {
    return new URL(`/api/${channel}`, options.origin).toString();
  }

  function eventsUrl(): string {
    const url = new URL('/api/events', options.origin);
    url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
    if (options.token) url.searchParams.set('token', options.token);
    return url.toString();
  }

  function connect(): void {
    retryTimer = null;
    let ws: WebSocket;
    try {
      ws = new Socket(eventsUrl());
    } catch (error) {
      console.error('Could not open the event socket:', error);
      scheduleReconnect();
      return;
    }
    socket = ws;
    ws.addEventListener('open', () => {
      retries = 0;
      options.onConnectionChange?.(true);
    });
    ws.addEventListener('message', (message) => dispatch(message.data));
    ws.addEventListener('close', () => {
      if (socket !== ws) return;
      socket = null;
      options.onConnectionChange?.(false);
      scheduleReconnect();
    });
  }

  function scheduleReconnect(): void {
    if (retryTimer !== null) return;
    const delay = Math.min(MAX_RETRY_MS, FIRST_RETRY_MS * 2 ** retries) * (0.75 + Math.random() * 0.5);
    retries += 1;
    retryTimer = setTimeout(connect, delay);
  }

  function dispatch(data: unknown): void {
    if (typeof data !== 'string') return;
    let message: { event?: unknown; payload?: unknown };
    try {
      message = JSON.parse(data) as { event?: unknown; payload?: unknown };
    } catch {
      return;
    }
    const set = listeners.get(message.event as EventName);
    if (!set) return;
    for (const listener of [...set]) {
      try {
        listener(message.payload);
      } catch (error) {
        console.error(`Listener for ${String(message.event)} failed:`, error);
      }
    }
  }

  const api: LetheApi = {
    async call<K extends CallName>(channel: K, params: CallParams<K>): Promise<ApiResult<CallResult<K>>> {
      const headers: Record<string, string> = { 'Content-Type': 'application/json' };
      if (options.token) headers.Authorization = `Bearer ${options.token}`;
      let response: Response;
      try {
        response = await doFetch(callUrl(channel), { method: 'POST', headers, body: JSON.stringify(params ?? {}) });
      } catch (error) {
        return failure('transport', `Could not reach the Lethe server (${errorText(error)}). Check that it is still running.`);
      }
      let body: unknown = null;
      try {
        body = await response.json();
      } catch {
        // Not JSON: described from the status below.
      }
      if (isApiResult(body)) return body as ApiResult<CallResult<K>>;
      if (response.status === 401 || response.status === 403) {
        return failure('unauthorized', 'The server refused the access token. Open the studio again from the link the server printed (it ends in ?token=…).');
      }
      return failure('transport', `The server answered ${channel} with HTTP ${response.status} ${response.statusText} and no result.`);
    },

    on<E extends EventName>(event: E, listener: (payload: ApiEvents[E]) => void): () => void {
      let set = listeners.get(event);
      if (!set) listeners.set(event, (set = new Set()));
      const entry = listener as Listener;
      set.add(entry);
      if (socket === null && retryTimer === null) connect();
      return () => {
        set.delete(entry);
      };
    },
  };
  return api;
}

function failure(code: string, message: string): { ok: false; error: ApiError } {
  return { ok: false, error: { code, message } };
}

function errorText(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

function isApiResult(body: unknown): body is ApiResult<unknown> {
  if (typeof body !== 'object' || body === null || !('ok' in body)) return false;
  if (body.ok === true) return 'value' in body;
  if (body.ok === false && 'error' in body) {
    const error = body.error as Partial<ApiError> | null;
    return typeof error?.message === 'string' && typeof error.code === 'string';
  }
  return false;
}
