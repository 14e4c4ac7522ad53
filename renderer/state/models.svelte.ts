/** The model list: load, add (validated by the app), remove. */
import type { ApiError, LetheApi, ModelInfo } from '../../electron/contract.ts';

export class ModelsState {
  items = $state<ModelInfo[]>([]);
  loaded = $state(false);
  loadError = $state<string | null>(null);
  /** An add or remove in flight. */
  busy = $state(false);
  /** Why the last add failed, in the app's words (ApiError.message). */
  addError = $state<string | null>(null);
  /** What the last add or remove did, for the status line. */
  notice = $state<string | null>(null);

  /** Called after the list changes (load, add, remove), e.g. to select a default model. */
  onChange: (() => void) | null = null;

  readonly #api: LetheApi;

  constructor(api: LetheApi) {
    this.#api = api;
  }

  byId(id: string): ModelInfo | null {
    return this.items.find((model) => model.id === id) ?? null;
  }

  async load(): Promise<void> {
    const result = await this.#api.call('models.list', {});
    if (result.ok) {
      this.items = result.value;
      this.loadError = null;
      this.onChange?.();
    } else {
      this.loadError = result.error.message;
    }
    this.loaded = true;
  }

  /** Adds the folder or file at `path`; returns the model, or null with `addError` set. */
  async add(path: string, name?: string): Promise<ModelInfo | null> {
    const trimmed = path.trim();
    if (trimmed === '') {
      this.addError = 'Enter the path of a diffusers folder or a .safetensors file.';
      return null;
    }
    return this.#run(async () => {
      const result = await this.#api.call('models.add', { path: trimmed, ...(name?.trim() ? { name: name.trim() } : {}) });
      if (!result.ok) return this.#failed(result.error);
      this.items = [...this.items.filter((model) => model.id !== result.value.id), result.value];
      this.notice = `Added ${result.value.name}.`;
      this.onChange?.();
      return result.value;
    });
  }

  /** Electron: the native picker, then add what was picked. Null when cancelled or failed. */
  async pickAndAdd(name?: string): Promise<ModelInfo | null> {
    this.addError = null;
    const picked = await this.#api.call('models.pick', {});
    if (!picked.ok) return this.#failed(picked.error);
    if (picked.value === null) return null;
    return this.add(picked.value.path, name);
  }

  async remove(id: string): Promise<boolean> {
    const model = this.byId(id);
    const removed = await this.#run(async () => {
      const result = await this.#api.call('models.remove', { id });
      if (!result.ok) {
        this.notice = result.error.message;
        return false;
      }
      this.items = this.items.filter((item) => item.id !== id);
      this.onChange?.();
      this.notice = `Removed ${model?.name ?? 'the model'} from the list; its files are untouched.`;
      return result.value.removed;
    });
    return removed ?? false;
  }

  async #run<T>(work: () => Promise<T>): Promise<T | null> {
    this.busy = true;
    this.addError = null;
    this.notice = null;
    try {
      return await work();
    } finally {
      this.busy = false;
    }
  }

  #failed(error: ApiError): null {
    this.addError = error.message;
    return null;
  }
}
