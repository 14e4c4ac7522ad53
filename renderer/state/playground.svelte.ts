/**
 * The Playground form: one model and a prompt over seeds, or an A/B grid of two
 * models over prompts x seeds. Validates as you type; `generate()` starts the job.
 */
import type { AbGridRequest, GenerateRequest, GenerationRecord, LetheApi, ModelInfo } from '../../electron/contract.ts';
import { type Parsed, parseSeedList, plural, seedRange } from '../format.ts';
import type { JobsState } from './jobs.svelte.ts';
import type { ModelsState } from './models.svelte.ts';

export type PlaygroundMode = 'single' | 'ab';
export type SeedMode = 'list' | 'count';
export type Field = 'model' | 'prompt' | 'seeds' | 'steps' | 'guidance' | 'size';

/** An A/B grid this UI started, with what its labels need. */
export interface AbGridView {
  jobId: string;
  request: AbGridRequest;
  modelNames: [string, string];
}

const MAX_SIZE = 2048;
const MAX_STEPS = 200;
const MAX_GUIDANCE = 30;

export class PlaygroundForm {
  mode = $state<PlaygroundMode>('single');
  modelId = $state('');
  abModelIds = $state<[string, string]>(['', '']);
  prompt = $state('');
  /** A/B mode: one prompt per line. */
  abPrompts = $state('');
  negativePrompt = $state('');
  seedMode = $state<SeedMode>('count');
  seedList = $state('42');
  seedCount = $state(1);
  baseSeed = $state(42);
  steps = $state(20);
  guidance = $state(7.5);
  width = $state(512);
  height = $state(512);

  submitting = $state(false);
  /** Why the last start failed, in the app's words. */
  startError = $state<string | null>(null);
  /** Set by reopen() when the image's model is no longer in the list. */
  note = $state<string | null>(null);
  /** The A/B grid on show. */
  abGrid = $state<AbGridView | null>(null);

  readonly #api: LetheApi;
  readonly #models: ModelsState;
  readonly #jobs: JobsState;

  model = $derived.by(() => this.#models.byId(this.modelId));
  abModels = $derived.by(() => this.abModelIds.map((id) => this.#models.byId(id)) as [ModelInfo | null, ModelInfo | null]);
  /** Width and height must be multiples of this (of both models' steps in A/B mode). */
  sizeStep = $derived(this.#sizeStep());
  seeds = $derived<Parsed<number[]>>(
    this.seedMode === 'list' ? parseSeedList(this.seedList) : seedRange(Number(this.baseSeed), Number(this.seedCount)),
  );
  promptList = $derived(this.abPrompts.split('\n').map((line) => line.trim()).filter((line) => line !== ''));
  problems = $derived(this.#validate());
  valid = $derived(Object.keys(this.problems).length === 0);
  imageCount = $derived(
    this.seeds.ok ? this.seeds.value.length * (this.mode === 'ab' ? 2 * Math.max(1, this.promptList.length) : 1) : 0,
  );

  constructor(api: LetheApi, models: ModelsState, jobs: JobsState) {
    this.#api = api;
    this.#models = models;
    this.#jobs = jobs;
  }

  /** After the models load: the app's default model (or the first), and an A/B pair. */
  applyDefaults(defaultModelId: string | null): void {
    const models = this.#models.items;
    const first = models.find((model) => model.id === defaultModelId) ?? models.find((model) => model.builtIn) ?? models[0];
    if (!first) return;
    if (!this.model) this.useModel(first);
    if (!this.abModels[0]) this.abModelIds[0] = first.id;
    if (!this.abModels[1]) this.abModelIds[1] = (models.find((model) => model.id !== this.abModelIds[0]) ?? first).id;
  }

  /** Selects the model and its native size. */
  useModel(model: ModelInfo): void {
    this.modelId = model.id;
    this.width = model.defaultSize;
    this.height = model.defaultSize;
    this.note = null;
  }

  /** A/B mode: model A's native size follows model A. */
  useAbModel(slot: 0 | 1, id: string): void {
    this.abModelIds[slot] = id;
    const model = this.#models.byId(id);
    if (slot === 0 && model) {
      this.width = model.defaultSize;
      this.height = model.defaultSize;
    }
  }

  /** Fills the form with an image's parameters (History "Reopen", gallery details). */
  reopen(record: GenerationRecord): void {
    this.mode = 'single';
    const model = this.#models.byId(record.modelId);
    if (model) this.modelId = model.id;
    this.note = model ? null : `${record.modelName} is no longer in the model list; add it again or pick another model.`;
    this.prompt = record.prompt;
    this.negativePrompt = record.negativePrompt;
    this.seedMode = 'list';
    this.seedList = String(record.seed);
    this.steps = record.steps;
    this.guidance = record.guidance;
    this.width = record.width;
    this.height = record.height;
    this.startError = null;
  }

  async generate(): Promise<void> {
    if (!this.valid || this.submitting || !this.seeds.ok) return;
    const seeds = this.seeds.value;
    const shared = {
      negativePrompt: this.negativePrompt.trim(),
      seeds,
      steps: Number(this.steps),
      guidance: Number(this.guidance),
      width: Number(this.width),
      height: Number(this.height),
    };
    this.submitting = true;
    this.startError = null;
    try {
      if (this.mode === 'single') {
        const request: GenerateRequest = { modelId: this.modelId, prompt: this.prompt.trim(), ...shared };
        const result = await this.#api.call('generate.start', request);
        if (!result.ok) this.startError = result.error.message;
        else this.#jobs.label(result.value.jobId, `${plural(seeds.length, 'image')} · ${request.prompt}`);
      } else {
        const [a, b] = this.abModels;
        const request: AbGridRequest = { modelIds: [this.abModelIds[0], this.abModelIds[1]], prompts: [...this.promptList], ...shared };
        const result = await this.#api.call('ab.start', request);
        if (!result.ok) {
          this.startError = result.error.message;
        } else {
          const modelNames: [string, string] = [a?.name ?? 'A', b?.name ?? 'B'];
          this.abGrid = { jobId: result.value.jobId, request, modelNames };
          this.#jobs.label(result.value.jobId, `A/B grid · ${modelNames[0]} vs ${modelNames[1]} · ${plural(this.imageCount, 'image')}`);
        }
      }
    } finally {
      this.submitting = false;
    }
  }

  #sizeStep(): number {
    const steps = this.mode === 'ab' ? this.abModels.map((model) => model?.sizeStep ?? 8) : [this.model?.sizeStep ?? 8];
    return steps.reduce((a, b) => (a * b) / gcd(a, b), 1);
  }

  #validate(): Partial<Record<Field, string>> {
    const problems: Partial<Record<Field, string>> = {};
    if (this.mode === 'single') {
      if (!this.model) problems.model = 'Pick a model.';
      if (this.prompt.trim() === '') problems.prompt = 'Describe the image to generate.';
    } else {
      if (!this.abModels[0] || !this.abModels[1]) problems.model = 'Pick model A and model B.';
      if (this.promptList.length === 0) problems.prompt = 'Enter at least one prompt, one per line.';
    }
    if (!this.seeds.ok) problems.seeds = this.seeds.error;
    const steps = Number(this.steps);
    if (!Number.isInteger(steps) || steps < 1 || steps > MAX_STEPS) problems.steps = `Steps: a whole number from 1 to ${MAX_STEPS}.`;
    const guidance = Number(this.guidance);
    if (!Number.isFinite(guidance) || guidance < 0 || guidance > MAX_GUIDANCE) problems.guidance = `Guidance: from 0 to ${MAX_GUIDANCE}.`;
    const step = this.sizeStep;
    for (const [name, value] of [['Width', Number(this.width)], ['Height', Number(this.height)]] as const) {
      if (!Number.isInteger(value) || value < step || value > MAX_SIZE || value % step !== 0) {
        problems.size = `${name} must be a multiple of ${step} from ${step} to ${MAX_SIZE}.`;
        break;
      }
    }
    return problems;
  }
}

function gcd(a: number, b: number): number {
  return b === 0 ? a : gcd(b, a % b);
}
