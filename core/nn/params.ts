/**
 * Binds model parameters, named by their diffusers/transformers state-dict
 * keys, to graph tensors. Frozen weights become initializers that point at
 * their bytes in the checkpoint (external data, no copy); trainable ones
 * become graph inputs. Missing keys and wrong shapes are collected while a
 * model is built and reported together by `finish()`.
 */
import { FileFormatError, LetheError } from '../errors.ts';
import * as F from '../graph/functional.ts';
import type { DType, Graph, Tensor } from '../graph/graph.ts';
import type { Dtype as FileDtype, SafetensorsFile } from '../io/safetensors.ts';

/** Where a state-dict key lives: which file, under which name there. */
export interface ParamLocation {
  file: SafetensorsFile;
  key: string;
}

/** Resolves a model key (diffusers naming) to its location, or undefined when absent. */
export type KeyResolver = (name: string) => ParamLocation | undefined;

/** A resolver over files whose keys are the model's keys behind an optional prefix. */
export function prefixResolver(files: readonly SafetensorsFile[], prefix = ''): KeyResolver {
  return (name) => {
    for (const file of files) if (file.tensors.has(prefix + name)) return { file, key: prefix + name };
    return undefined;
  };
}

export class ModelLoadError extends LetheError {
  constructor(
    readonly missing: string[],
    readonly badShapes: string[],
    message: string,
  ) {
    super('model-load', message);
  }
}

const FILE_DTYPE: Partial<Record<FileDtype, DType>> = { F32: 'float32', F16: 'float16', BF16: 'bfloat16' };

export interface ParamBinderOptions {
  /** Keys that train: fed as graph inputs (their values come from `initialValue`). */
  trainable?: (name: string) => boolean;
  /** Graph names get this prefix, so several models can share one graph. */
  namePrefix?: string;
  /**
   * Keys the checkpoint lacks start from these values and train (a model
   * built from scratch, or new layers added to a loaded one) instead of
   * being reported missing.
   */
  initialize?: (name: string, shape: readonly number[]) => Float32Array;
}

export class ParamBinder {
  private readonly missing: string[] = [];
  private readonly badShapes: string[] = [];
  private readonly bound = new Map<string, Tensor>();
  readonly trainableNames: string[] = [];
  private readonly initialized = new Map<string, Float32Array>();

  constructor(
    readonly graph: Graph,
    readonly resolve: KeyResolver,
    private readonly options: ParamBinderOptions = {},
  ) {}

  /**
   * The float32 tensor for `name` of the given shape. A stored shape that
   * differs only by size-1 axes (a 1x1 conv kernel stored for a linear) is
   * reshaped; fp16/bf16 weights are cast inside the graph.
   */
  get(name: string, shape: readonly number[]): Tensor {
    const hit = this.bound.get(name);
    if (hit) return hit;
    const graphName = (this.options.namePrefix ?? '') + name;
    const loc = this.resolve(name);
    let t: Tensor;
    if (!loc && this.options.initialize) {
      t = this.graph.input(graphName, shape);
      this.initialized.set(name, this.options.initialize(name, shape));
      this.trainableNames.push(name);
    } else if (!loc) {
      this.missing.push(name);
      t = this.graph.input(graphName, shape); // keeps the build going so every problem is listed at once
    } else {
      const info = loc.file.info(loc.key);
      const dtype = FILE_DTYPE[info.dtype];
      const stored = info.shape.filter((d) => d !== 1).join(',');
      if (!dtype || stored !== shape.filter((d) => d !== 1).join(',')) {
        this.badShapes.push(`${name}: ${info.dtype}[${info.shape.join(',')}] in the file, float [${shape.join(',')}] expected`);
        t = this.graph.input(graphName, shape);
      } else if (this.options.trainable?.(name)) {
        t = this.graph.input(graphName, shape);
        this.trainableNames.push(name);
      } else {
        const p = this.graph.param(graphName, info.shape, dtype, { kind: 'external', file: loc.file.path, offset: info.byteOffset, length: info.byteLength });
        t = F.reshape(F.cast(p, 'float32'), shape);
      }
    }
    this.bound.set(name, t);
    return t;
  }

  /** A child binder whose keys are `prefix.` + name (for submodules). */
  scope(prefix: string): Scope {
    return new Scope(this, prefix);
  }

  /** The float32 values of a key, for feeding a trainable tensor. */
  initialValue(name: string): Float32Array {
    const fresh = this.initialized.get(name);
    if (fresh) return fresh;
    const loc = this.resolve(name);
    if (!loc) throw new FileFormatError('', `no tensor '${name}' in the checkpoint`);
    return loc.file.readAsFloat32(loc.key);
  }

  /** Throws one error listing every missing key and wrong shape. */
  finish(modelName: string): void {
    if (this.missing.length === 0 && this.badShapes.length === 0) return;
    const lines = [
      ...(this.missing.length ? [`missing ${this.missing.length} tensors: ${list(this.missing)}`] : []),
      ...(this.badShapes.length ? [`unexpected shapes: ${list(this.badShapes)}`] : []),
    ];
    throw new ModelLoadError(this.missing, this.badShapes, `${modelName}: the checkpoint does not match its config. ${lines.join('. ')}. Check that the file is a ${modelName} checkpoint and that config.json belongs to it.`);
  }

  boundNames(): string[] {
    return [...this.bound.keys()];
  }
}

/** A view of a binder under a key prefix: `scope.get('weight')` reads `prefix.weight`. */
export class Scope {
  constructor(
    readonly binder: ParamBinder,
    readonly prefix: string,
  ) {}

  get(name: string, shape: readonly number[]): Tensor {
    return this.binder.get(this.prefix ? `${this.prefix}.${name}` : name, shape);
  }

  scope(name: string | number): Scope {
    return new Scope(this.binder, this.prefix ? `${this.prefix}.${name}` : String(name));
  }

  has(name: string): boolean {
    return this.binder.resolve(this.prefix ? `${this.prefix}.${name}` : name) !== undefined;
  }
}

function list(items: string[]): string {
  return items.length <= 12 ? items.join(', ') : `${items.slice(0, 12).join(', ')} and ${items.length - 12} more`;
}
