/**
 * A compiled training step: forward, backward, clipping and the optimizer
 * update in one onnxruntime run. The trainable tensors and optimizer state
 * are fed in and come back updated; frozen weights stay initializers.
 * A NaN/Inf loss or gradient raises NonFiniteError and leaves the weights at
 * their last good values.
 */
import { GraphBuildError, NonFiniteError } from '../errors.ts';
import { grad } from '../graph/autodiff.ts';
import type { Tensor } from '../graph/graph.ts';
import { emitOnnx } from '../graph/onnx.ts';
import { buildUpdate, stateSlots, stepScalars, type OptimizerConfig } from './optim.ts';
import { Session, type Feeds, type HostTensor, type ProviderName, type SessionOptions } from './session.ts';

export interface TrainerSpec {
  /** A scalar loss. */
  loss: Tensor;
  /** Trainable tensors (graph inputs) with their initial values. */
  params: Record<string, { tensor: Tensor; init: Float32Array }>;
  optimizer: OptimizerConfig;
  /** Other tensors to return from every step (metrics, intermediate values). */
  outputs?: Record<string, Tensor>;
  session?: SessionOptions;
}

export interface StepResult {
  step: number;
  loss: number;
  gradNorm: number;
  outputs: Record<string, HostTensor>;
}

export interface TrainerState {
  step: number;
  params: Record<string, Float32Array>;
  /** `<slot>.<param>` -> optimizer state. */
  slots: Record<string, Float32Array>;
}

export class Trainer {
  private stepCount = 0;
  private constructor(
    private readonly session: Session,
    private readonly cfg: OptimizerConfig,
    private readonly graphNames: Record<string, string>,
    private params: Record<string, Float32Array>,
    private slots: Record<string, Float32Array>,
    private readonly extraOutputs: string[],
    /** The shape of every trained tensor (the state holds them flat). */
    readonly shapes: Readonly<Record<string, readonly number[]>>,
  ) {
    this.spareParams = mapValues(params, (v) => new Float32Array(v.length));
    this.spareSlots = mapValues(slots, (v) => new Float32Array(v.length));
  }

  /** The step writes its updated tensors here, then the two sets swap: no per-step allocation. */
  private spareParams: Record<string, Float32Array>;
  private spareSlots: Record<string, Float32Array>;

  static async create(spec: TrainerSpec): Promise<Trainer> {
    const { loss, optimizer } = spec;
    if (loss.rank !== 0) throw new GraphBuildError(`Trainer: the loss must be a scalar, got [${loss.shape}]; reduce it with meanAll or sumAll`);
    const names = Object.keys(spec.params);
    const graphNames: Record<string, string> = {};
    for (const n of names) {
      const t = spec.params[n].tensor;
      const inputName = t.graph.nameOf(t);
      if (t.op !== 'input' || !inputName) throw new GraphBuildError(`Trainer: parameter '${n}' must be a graph input (Graph.input or a trainable ParamBinder key)`);
      if (spec.params[n].init.length !== t.size) throw new GraphBuildError(`Trainer: '${n}' has ${t.size} elements but ${spec.params[n].init.length} initial values`);
      graphNames[n] = inputName;
    }
    const tensors = Object.fromEntries(names.map((n) => [n, spec.params[n].tensor]));
    const grads = grad(loss, names.map((n) => tensors[n]));
    const update = buildUpdate(loss.graph, optimizer, tensors, Object.fromEntries(names.map((n, k) => [n, grads[k]])), loss);
    const extra = spec.outputs ?? {};
    const model = emitOnnx({ loss, ...update.outputs, ...extra });
    // Training keeps large activations alive across the step: without the arena, freed blocks go back to the OS.
    const session = await Session.create(model, { memoryArena: false, ...spec.session });
    const params = Object.fromEntries(names.map((n) => [n, Float32Array.from(spec.params[n].init)]));
    const slots: Record<string, Float32Array> = {};
    for (const slot of stateSlots(optimizer)) for (const n of names) slots[`${slot}.${n}`] = new Float32Array(spec.params[n].init.length);
    return new Trainer(session, optimizer, graphNames, params, slots, Object.keys(extra), Object.fromEntries(names.map((n) => [n, spec.params[n].tensor.shape])));
  }

  get provider(): ProviderName {
    return this.session.provider;
  }

  get fallbackNote(): string | null {
    return this.session.fallbackNote;
  }

  get step(): number {
    return this.stepCount;
  }

  /** One optimizer step on `feeds` (the data inputs). `lr` overrides the configured rate (schedules). */
  async run(feeds: Feeds, lr?: number): Promise<StepResult> {
    const t = this.stepCount + 1;
    const all: Record<string, HostTensor | Feeds[string]> = { ...feeds, ...stepScalars(this.cfg, t, lr) };
    for (const [n, v] of Object.entries(this.params)) all[this.graphNames[n]] = v;
    for (const [k, v] of Object.entries(this.slots)) all[k] = v;
    const into: Record<string, Float32Array> = {};
    for (const [n, v] of Object.entries(this.spareParams)) into[`new.${n}`] = v;
    for (const [k, v] of Object.entries(this.spareSlots)) into[`new.${k}`] = v;
    const out = await this.session.run(all, undefined, into);
    const loss = out.loss.data[0] as number;
    const gradNorm = out['optim.grad_norm'].data[0] as number;
    if (out['optim.finite'].data[0] !== 1) {
      const which = Number.isFinite(loss) ? ['gradients'] : ['loss'];
      throw new NonFiniteError(
        t,
        which,
        `step ${t}: the ${which[0]} became ${Number.isNaN(Number.isFinite(loss) ? gradNorm : loss) ? 'NaN' : 'infinite'}; the weights were kept at step ${t - 1}. Lower the learning rate, enable gradient clipping, or check the inputs for NaN.`,
      );
    }
    [this.params, this.spareParams] = [this.spareParams, this.params];
    [this.slots, this.spareSlots] = [this.spareSlots, this.slots];
    this.stepCount = t;
    return { step: t, loss, gradNorm, outputs: Object.fromEntries(this.extraOutputs.map((k) => [k, out[k]])) };
  }

  /** A copy of the current value of a trained tensor. */
  parameter(name: string): Float32Array {
    return Float32Array.from(this.params[name]);
  }

  /** A copy of everything needed to resume (the live buffers are reused by later steps). */
  saveState(): TrainerState {
    return { step: this.stepCount, params: mapValues(this.params, (v) => Float32Array.from(v)), slots: mapValues(this.slots, (v) => Float32Array.from(v)) };
  }

  loadState(state: TrainerState): void {
    for (const n of Object.keys(this.params)) {
      if (state.params[n]?.length !== this.params[n].length) throw new GraphBuildError(`Trainer.loadState: '${n}' is missing or has the wrong size`);
    }
    this.params = mapValues(state.params, (v) => Float32Array.from(v));
    this.slots = mapValues(state.slots, (v) => Float32Array.from(v));
    this.stepCount = state.step;
  }

  async release(): Promise<void> {
    await this.session.release();
  }
}

function mapValues<T, U>(o: Record<string, T>, f: (v: T) => U): Record<string, U> {
  return Object.fromEntries(Object.entries(o).map(([k, v]) => [k, f(v)]));
}
