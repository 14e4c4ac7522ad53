/** Which page is on show, kept in the URL hash (#/models) so reloads and back/forward work. */

export type Page = 'models' | 'playground' | 'history';

export const PAGES: readonly { id: Page; label: string }[] = [
  { id: 'models', label: 'Models' },
  { id: 'playground', label: 'Playground' },
  { id: 'history', label: 'History' },
];

function pageFromHash(hash: string): Page {
  const id = hash.replace(/^#\/?/, '');
  return PAGES.find((page) => page.id === id)?.id ?? 'playground';
}

export class Nav {
  page = $state<Page>(pageFromHash(window.location.hash));

  go(page: Page): void {
    this.page = page;
    if (pageFromHash(window.location.hash) !== page || window.location.hash === '') window.location.hash = `#/${page}`;
  }

  /** Called on `hashchange`. */
  sync(): void {
    this.page = pageFromHash(window.location.hash);
  }
}
