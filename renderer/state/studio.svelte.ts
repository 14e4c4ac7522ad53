/** The studio's state, one instance for the app: the transport and the page states over it. */
import type { AppInfo, LetheApi } from '../../electron/contract.ts';
import { connect, type Transport } from '../api.ts';
import { HistoryState } from './history.svelte.ts';
import { JobsState } from './jobs.svelte.ts';
import { ModelsState } from './models.svelte.ts';
import { Nav } from './nav.svelte.ts';
import { PlaygroundForm } from './playground.svelte.ts';

export class Studio {
  info = $state<AppInfo | null>(null);
  infoError = $state<string | null>(null);
  /** The event stream is up (always true in Electron). */
  connected = $state(true);

  readonly api: LetheApi;
  readonly transport: Transport;
  readonly nav = new Nav();
  readonly models: ModelsState;
  readonly jobs: JobsState;
  readonly form: PlaygroundForm;
  readonly history: HistoryState;

  /** 'web' asks for model paths in a text field; 'electron' opens a native picker. */
  mode = $derived.by<Transport>(() => this.info?.transport ?? this.transport);

  constructor() {
    const connection = connect((connected) => {
      this.connected = connected;
      // Events may have been missed while the socket was down.
      if (connected) void this.jobs.refresh();
    });
    this.api = connection.api;
    this.transport = connection.transport;
    this.connected = connection.transport === 'electron';
    this.models = new ModelsState(this.api);
    this.jobs = new JobsState(this.api);
    this.form = new PlaygroundForm(this.api, this.models, this.jobs);
    // A first model added (or the selected one removed) becomes the selection, as the default would.
    this.models.onChange = () => this.form.applyDefaults(this.info?.defaultModelId ?? null);
    this.history = new HistoryState(this.api);
  }

  async start(): Promise<void> {
    this.jobs.listen();
    const [info] = await Promise.all([this.api.call('app.info', {}), this.models.load(), this.jobs.refresh()]);
    if (info.ok) this.info = info.value;
    else this.infoError = info.error.message;
    this.form.applyDefaults(this.info?.defaultModelId ?? null);
  }
}
