/**
 * The tensor graph IR. A `Tensor` is the single output of one node; nodes are
 * created through `Graph.node`, which runs the op's shape rule at once so a
 * bad graph fails where it is built, naming the op, its input shapes and why.
 *
 * Shapes are static: a graph is built for one batch size and image size, the
 * way a training step is compiled once and run many times.
 */
import { GraphBuildError } from '../errors.ts';
import { OPS, type OpName } from './ops.ts';

export type DType = 'float32' | 'float16' | 'bfloat16' | 'int64' | 'int32' | 'bool' | 'uint8';
export type Shape = readonly number[];
export type AttrValue = number | string | boolean | readonly number[] | null;
export type Attrs = Readonly<Record<string, AttrValue>>;

/** Where a frozen parameter's bytes live. */
export type ParamSource =
  | { kind: 'external'; file: string; offset: number; length: number }
  | { kind: 'inline'; data: ArrayBufferView };

export const FLOAT_DTYPES: ReadonlySet<DType> = new Set(['float32', 'float16', 'bfloat16']);

export class Tensor {
  constructor(
    readonly graph: Graph,
    readonly id: number,
    readonly op: OpName,
    readonly inputs: readonly Tensor[],
    readonly attrs: Attrs,
    readonly shape: Shape,
    readonly dtype: DType,
  ) {}

  get rank(): number {
    return this.shape.length;
  }

  get size(): number {
    return numel(this.shape);
  }

  toString(): string {
    return `%${this.id}:${this.dtype}[${this.shape.join(',')}]`;
  }
}

export interface InferredType {
  shape: Shape;
  dtype: DType;
}

/** Data that sources (inputs, params, constants) keep outside the JSON attrs. */
interface SourceInfo {
  name?: string;
  param?: ParamSource;
  constant?: ArrayBufferView;
}

export class Graph {
  private readonly nodes: Tensor[] = [];
  private readonly sources = new Map<number, SourceInfo>();
  private readonly names = new Map<string, Tensor>();
  /** Hash-consing: the same op on the same inputs with the same attrs is built once. */
  private readonly interned = new Map<string, Tensor>();

  /** A value fed at run time (data, or a trainable tensor). */
  input(name: string, shape: Shape, dtype: DType = 'float32'): Tensor {
    return this.source('input', name, shape, dtype, {});
  }

  /** A frozen tensor, emitted as an initializer (external data when it lives in a file). */
  param(name: string, shape: Shape, dtype: DType, from: ParamSource): Tensor {
    if (from.kind === 'inline' && from.data.byteLength !== numel(shape) * dtypeBytes(dtype)) {
      throw new GraphBuildError(
        `param '${name}': ${from.data.byteLength} bytes given for ${dtype}[${shape.join(',')}] (${numel(shape) * dtypeBytes(dtype)} expected)`,
      );
    }
    return this.source('param', name, shape, dtype, { param: from });
  }

  /** A small constant embedded in the model. */
  constant(data: Float32Array | Float64Array | BigInt64Array | Int32Array | Uint8Array | number[], shape: Shape, dtype: DType = 'float32'): Tensor {
    const view = toTypedArray(data, dtype);
    if (view.length !== numel(shape)) {
      throw new GraphBuildError(`constant: ${view.length} values for shape [${shape.join(',')}]`);
    }
    const t = this.addNode('constant', [], { dtype }, { shape, dtype });
    this.sources.set(t.id, { constant: view });
    return t;
  }

  scalar(value: number, dtype: DType = 'float32'): Tensor {
    const key = `scalar|${dtype}|${Object.is(value, -0) ? '-0' : String(value)}`;
    const hit = this.interned.get(key);
    if (hit) return hit;
    const t = this.constant([value], [], dtype);
    this.interned.set(key, t);
    return t;
  }

  /** Adds a node of a table op; runs its shape rule now. Identical nodes are shared. */
  node(op: OpName, inputs: readonly Tensor[], attrs: Attrs = {}): Tensor {
    const def = OPS[op];
    if (!def) throw new GraphBuildError(`unknown op '${op}'`);
    for (const x of inputs) {
      if (x.graph !== this) throw new GraphBuildError(`${op}: input ${x} belongs to another graph`);
    }
    const key = `${op}|${inputs.map((x) => x.id).join(',')}|${JSON.stringify(attrs)}`;
    const hit = this.interned.get(key);
    if (hit) return hit;
    let inferred: InferredType;
    try {
      inferred = def.infer(inputs, attrs);
    } catch (e) {
      const reason = e instanceof Error ? e.message : String(e);
      throw new GraphBuildError(
        `${op}(${inputs.map((x) => `${x.dtype}[${x.shape.join(',')}]`).join(', ')})${formatAttrs(attrs)}: ${reason}`,
      );
    }
    const t = this.addNode(op, inputs, attrs, inferred);
    this.interned.set(key, t);
    return t;
  }

  nameOf(t: Tensor): string | undefined {
    return this.sources.get(t.id)?.name;
  }

  paramSource(t: Tensor): ParamSource | undefined {
    return this.sources.get(t.id)?.param;
  }

  constantData(t: Tensor): ArrayBufferView | undefined {
    return this.sources.get(t.id)?.constant;
  }

  byName(name: string): Tensor | undefined {
    return this.names.get(name);
  }

  get size(): number {
    return this.nodes.length;
  }

  /** Nodes that `outputs` depend on, in build order (which is topological). */
  reachable(outputs: readonly Tensor[]): Tensor[] {
    const seen = new Set<number>();
    const stack = [...outputs];
    while (stack.length) {
      const t = stack.pop()!;
      if (seen.has(t.id)) continue;
      seen.add(t.id);
      stack.push(...t.inputs);
    }
    return this.nodes.filter((t) => seen.has(t.id));
  }

  /** One line per node, for error messages and debugging. */
  format(outputs?: readonly Tensor[]): string {
    const list = outputs ? this.reachable(outputs) : this.nodes;
    return list
      .map((t) => {
        const name = this.nameOf(t);
        const args = t.inputs.map((x) => `%${x.id}`).join(', ');
        return `${t} = ${t.op}${name ? ` '${name}'` : ''}(${args})${formatAttrs(t.attrs)}`;
      })
      .join('\n');
  }

  private source(op: 'input' | 'param', name: string, shape: Shape, dtype: DType, info: SourceInfo): Tensor {
    if (this.names.has(name)) throw new GraphBuildError(`${op} '${name}': the name is already used in this graph`);
    assertShape(op, shape);
    const t = this.addNode(op, [], { name }, { shape, dtype });
    this.sources.set(t.id, { ...info, name });
    this.names.set(name, t);
    return t;
  }

  private addNode(op: OpName, inputs: readonly Tensor[], attrs: Attrs, type: InferredType): Tensor {
    assertShape(op, type.shape);
    const t = new Tensor(this, this.nodes.length, op, inputs, attrs, [...type.shape], type.dtype);
    this.nodes.push(t);
    return t;
  }
}

export function numel(shape: Shape): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

export function dtypeBytes(dtype: DType): number {
  switch (dtype) {
    case 'float32':
    case 'int32':
      return 4;
    case 'float16':
    case 'bfloat16':
      return 2;
    case 'int64':
      return 8;
    case 'bool':
    case 'uint8':
      return 1;
  }
}

function assertShape(op: string, shape: Shape): void {
  for (const d of shape) {
    if (!Number.isSafeInteger(d) || d < 0) {
      throw new GraphBuildError(`${op}: invalid shape [${shape.join(',')}]`);
    }
  }
}

function formatAttrs(attrs: Attrs): string {
  const keys = Object.keys(attrs);
  if (keys.length === 0) return '';
  return ` {${keys.map((k) => `${k}=${JSON.stringify(attrs[k])}`).join(', ')}}`;
}

function toTypedArray(
  data: Float32Array | Float64Array | BigInt64Array | Int32Array | Uint8Array | number[],
  dtype: DType,
): ArrayBufferView & { length: number } {
  switch (dtype) {
    case 'float32':
      return data instanceof Float32Array ? data : Float32Array.from(data as ArrayLike<number>);
    case 'int64':
      return data instanceof BigInt64Array ? data : BigInt64Array.from(Array.from(data as ArrayLike<number>, (v) => BigInt(v)));
    case 'int32':
      return data instanceof Int32Array ? data : Int32Array.from(data as ArrayLike<number>);
    case 'bool':
    case 'uint8':
      return data instanceof Uint8Array ? data : Uint8Array.from(data as ArrayLike<number>);
    default:
      throw new GraphBuildError(`constant: dtype ${dtype} is not supported for constants; build float32 and cast`);
  }
}
