/** History: search (prompt, model or seed) over the app's generation records, a page at a time. */
import type { GenerationRecord, LetheApi } from '../../electron/contract.ts';

const PAGE_SIZE = 20;
const TYPING_PAUSE_MS = 250;

export class HistoryState {
  query = $state('');
  items = $state<GenerationRecord[]>([]);
  total = $state(0);
  offset = $state(0);
  loading = $state(false);
  loaded = $state(false);
  error = $state<string | null>(null);
  readonly limit = PAGE_SIZE;

  page = $derived(Math.floor(this.offset / PAGE_SIZE) + 1);
  pages = $derived(Math.max(1, Math.ceil(this.total / PAGE_SIZE)));

  readonly #api: LetheApi;
  #timer: ReturnType<typeof setTimeout> | null = null;
  /** Answers to older requests are dropped. */
  #request = 0;

  constructor(api: LetheApi) {
    this.#api = api;
  }

  /** Called as the search box changes: searches from page 1 once typing pauses. */
  searchSoon(): void {
    if (this.#timer !== null) clearTimeout(this.#timer);
    this.#timer = setTimeout(() => {
      this.#timer = null;
      this.offset = 0;
      void this.load();
    }, TYPING_PAUSE_MS);
  }

  async load(): Promise<void> {
    const request = ++this.#request;
    this.loading = true;
    const query = this.query.trim();
    const result = await this.#api.call('history.search', {
      ...(query ? { query } : {}),
      limit: PAGE_SIZE,
      offset: this.offset,
    });
    if (request !== this.#request) return;
    this.loading = false;
    this.loaded = true;
    if (!result.ok) {
      this.error = result.error.message;
      return;
    }
    this.error = null;
    this.items = result.value.items;
    this.total = result.value.total;
  }

  goTo(page: number): void {
    const clamped = Math.min(Math.max(1, page), this.pages);
    this.offset = (clamped - 1) * PAGE_SIZE;
    void this.load();
  }
}
