/**
 * Picks the transport the renderer talks to the app through. Both give a
 * `LetheApi` (electron/contract.ts), so nothing past this file knows which:
 * - Electron: the preload exposes `window.lethe` (contextBridge);
 * - web (`lethe serve`): HTTP + WebSocket to the origin the page came from
 *   (web-api.ts), authorised by the `?token=` the server printed in its link.
 */
import type { LetheApi } from '../electron/contract.ts';
import { createWebApi } from './web-api.ts';

declare global {
  interface Window {
    /** Set by the Electron preload; absent in a browser. */
    lethe?: LetheApi;
  }
}

export type Transport = 'electron' | 'web';

export interface Connection {
  api: LetheApi;
  transport: Transport;
}

const TOKEN_KEY = 'lethe.token';

export function connect(onConnectionChange: (connected: boolean) => void): Connection {
  if (window.lethe) return { api: plainParams(window.lethe), transport: 'electron' };
  if (window.location.protocol !== 'http:' && window.location.protocol !== 'https:') {
    return { api: unavailable('Lethe could not reach the app: open the studio from the Lethe app, or from the address that npm run serve printed.'), transport: 'web' };
  }
  const api = createWebApi({ origin: window.location.origin, token: takeToken(), onConnectionChange });
  return { api, transport: 'web' };
}

/**
 * Electron's IPC clones params with the structured-clone algorithm, which
 * refuses Svelte's $state proxies: hand it plain JSON copies (every param is JSON).
 */
function plainParams(lethe: LetheApi): LetheApi {
  return {
    call: (channel, params) => lethe.call(channel, JSON.parse(JSON.stringify(params ?? {}))),
    on: (event, listener) => lethe.on(event, listener),
  };
}

/** Answers every call with the same error (no transport to be had). */
function unavailable(message: string): LetheApi {
  return {
    call: async () => ({ ok: false, error: { code: 'transport', message } }),
    on: () => () => {},
  };
}

/**
 * The token from `?token=` in the page URL, kept in sessionStorage so a reload
 * keeps working, and taken out of the visible URL (and so out of screenshots,
 * bookmarks and the history list).
 */
export function takeToken(): string | null {
  const url = new URL(window.location.href);
  const fromUrl = url.searchParams.get('token');
  if (fromUrl) {
    try {
      sessionStorage.setItem(TOKEN_KEY, fromUrl);
    } catch {
      // Storage disabled: the token lives for this page only.
    }
    url.searchParams.delete('token');
    history.replaceState(history.state, '', `${url.pathname}${url.search}${url.hash}`);
    return fromUrl;
  }
  try {
    return sessionStorage.getItem(TOKEN_KEY);
  } catch {
    return null;
  }
}
