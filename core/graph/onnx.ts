/**
 * Emits a graph as an ONNX model (opset 17) with the protobuf schema of the
 * `onnx-proto` package. Frozen parameters that live in files become external
 * data pointing at their byte ranges (no copy, no 2 GB protobuf limit);
 * inputs stay graph inputs; any tensors can be outputs.
 */
import path from 'node:path';
import onnxProto from 'onnx-proto';
import { GraphBuildError } from '../errors.ts';
import { dtypeBytes, numel, type DType, type Shape, type Tensor } from './graph.ts';
import { OPS, onnxDType, swapsLastTwo, type EmitContext, type OnnxAttr } from './ops.ts';

const { onnx } = onnxProto;

export const OPSET = 17;

export interface ValueSpec {
  name: string;
  shape: number[];
  dtype: DType;
}

export interface EmittedModel {
  bytes: Uint8Array;
  /** Folder that external-data locations are relative to (session config), or null. */
  externalFolder: string | null;
  inputs: ValueSpec[];
  outputs: ValueSpec[];
  /** Number of ONNX nodes, for reports. */
  nodeCount: number;
}

export function emitOnnx(outputs: Readonly<Record<string, Tensor>>, name = 'lethe'): EmittedModel {
  const entries = Object.entries(outputs);
  if (entries.length === 0) throw new GraphBuildError('emitOnnx: no outputs requested');
  const graph = entries[0][1].graph;
  const order = graph.reachable(entries.map(([, t]) => t));

  const nodes: onnxProto.onnx.INodeProto[] = [];
  const initializers: onnxProto.onnx.ITensorProto[] = [];
  const inputs: ValueSpec[] = [];
  const valueOf = new Map<number, string>();
  const cse = new Map<string, string[]>();
  const domains = new Set<string>();
  const constants = new Map<string, string>();
  const external: { tensor: onnxProto.onnx.ITensorProto; file: string; offset: number; length: number }[] = [];
  let counter = 0;
  const fresh = (hint: string): string => `${hint}_${counter++}`;

  const constant = (key: string, dtype: DType, shape: Shape, data: ArrayBufferView): string => {
    const hit = constants.get(key);
    if (hit) return hit;
    const tname = fresh('const');
    initializers.push(rawTensor(tname, dtype, shape, data));
    constants.set(key, tname);
    return tname;
  };

  const ctx: EmitContext = {
    node(opType, ins, attrs = {}, count = 1, domain = '') {
      const key = `${domain}|${opType}|${ins.join(',')}|${JSON.stringify(attrs)}|${count}`;
      const hit = cse.get(key);
      if (hit) return hit;
      const outs = Array.from({ length: count }, () => fresh(opType.toLowerCase()));
      if (domain) domains.add(domain);
      nodes.push({ opType, domain, input: [...ins], output: outs, name: fresh('n'), attribute: Object.entries(attrs).map(([k, v]) => attribute(k, v)) });
      cse.set(key, outs);
      return outs;
    },
    int64: (values) => constant(`i64|${values.join(',')}`, 'int64', [values.length], BigInt64Array.from(values, (v) => BigInt(v))),
    scalar: (value, dtype) => {
      if (dtype !== 'float32' && dtype !== 'int64') throw new GraphBuildError(`emit: scalar constants of ${dtype} are not supported`);
      const data = dtype === 'int64' ? new BigInt64Array([BigInt(value)]) : new Float32Array([value]);
      return constant(`s|${dtype}|${Object.is(value, -0) ? '-0' : value}`, dtype, [], data);
    },
    float32: (data, shape) => constant(`f32|${shape.join(',')}|${Array.prototype.join.call(data, ',')}`, 'float32', shape, data),
    valueOf: (t) => {
      const v = valueOf.get(t.id);
      if (v === undefined) throw new GraphBuildError(`emit: ${t} is used before it is emitted`);
      return v;
    },
  };

  // Transposes whose every consumer is a MatMul reading them in place are not emitted at all.
  const consumers = new Map<number, Tensor[]>();
  for (const t of order) for (const x of t.inputs) consumers.set(x.id, [...(consumers.get(x.id) ?? []), t]);
  const requested = new Set(entries.map(([, t]) => t.id));
  const readInPlace = (t: Tensor): boolean =>
    swapsLastTwo(t) && !requested.has(t.id) && (consumers.get(t.id) ?? []).every((c) => c.op === 'matmul');

  for (const t of order) {
    if (t.op === 'input') {
      const n = graph.nameOf(t)!;
      inputs.push({ name: n, shape: [...t.shape], dtype: t.dtype });
      valueOf.set(t.id, n);
    } else if (t.op === 'param') {
      const n = graph.nameOf(t)!;
      const src = graph.paramSource(t)!;
      if (src.kind === 'inline') {
        initializers.push(rawTensor(n, t.dtype, t.shape, src.data));
      } else {
        const expected = numel(t.shape) * dtypeBytes(t.dtype);
        if (src.length !== expected) throw new GraphBuildError(`param '${n}': ${src.length} bytes in ${src.file} for ${t.dtype}[${t.shape}] (${expected} expected)`);
        const tensor: onnxProto.onnx.ITensorProto = { name: n, dims: [...t.shape], dataType: onnxDType(t.dtype), dataLocation: onnx.TensorProto.DataLocation.EXTERNAL };
        initializers.push(tensor);
        external.push({ tensor, file: src.file, offset: src.offset, length: src.length });
      }
      valueOf.set(t.id, n);
    } else if (t.op === 'constant') {
      const n = fresh('constant');
      initializers.push(rawTensor(n, t.dtype, t.shape, graph.constantData(t)!));
      valueOf.set(t.id, n);
    } else if (!readInPlace(t)) {
      valueOf.set(t.id, OPS[t.op].emit(ctx, t, t.inputs.map((x) => valueOf.get(x.id) ?? '')));
    }
  }

  // Outputs: rename the producing value where we can, else add an Identity.
  const sourceNames = new Set([...inputs.map((v) => v.name), ...initializers.map((v) => v.name!)]);
  const rename = new Map<string, string>();
  const outSpecs: ValueSpec[] = [];
  for (const [outName, t] of entries) {
    const v = valueOf.get(t.id)!;
    if (!sourceNames.has(v) && !rename.has(v)) rename.set(v, outName);
    else nodes.push({ opType: 'Identity', input: [rename.get(v) ?? v], output: [outName], name: fresh('n') });
    outSpecs.push({ name: outName, shape: [...t.shape], dtype: t.dtype });
  }
  for (const n of nodes) {
    n.input = n.input!.map((v) => rename.get(v) ?? v);
    n.output = n.output!.map((v) => rename.get(v) ?? v);
  }

  const externalFolder = bindExternal(external);
  const model = onnx.ModelProto.create({
    irVersion: 8,
    producerName: 'lethe',
    opsetImport: [{ domain: '', version: OPSET }, ...[...domains].map((domain) => ({ domain, version: 1 }))],
    graph: {
      name,
      node: nodes,
      initializer: initializers,
      input: inputs.map(valueInfo),
      output: outSpecs.map(valueInfo),
    },
  });
  return { bytes: onnx.ModelProto.encode(model).finish(), externalFolder, inputs, outputs: outSpecs, nodeCount: nodes.length };
}

/**
 * onnxruntime accepts only relative external-data paths inside one folder, so
 * locations are made relative to the deepest folder holding every file.
 */
function bindExternal(list: { tensor: onnxProto.onnx.ITensorProto; file: string; offset: number; length: number }[]): string | null {
  if (list.length === 0) return null;
  const dirs = list.map((e) => path.resolve(path.dirname(e.file)));
  let root = dirs[0];
  for (const d of dirs) {
    while (path.relative(root, d).startsWith('..') || path.isAbsolute(path.relative(root, d))) {
      const up = path.dirname(root);
      if (up === root) throw new GraphBuildError(`weights are on different drives (${dirs[0]}, ${d}); put the model files in one place`);
      root = up;
    }
  }
  for (const e of list) {
    e.tensor.externalData = [
      { key: 'location', value: path.relative(root, path.resolve(e.file)).split(path.sep).join('/') },
      { key: 'offset', value: String(e.offset) },
      { key: 'length', value: String(e.length) },
    ];
  }
  return root;
}

function valueInfo(v: ValueSpec): onnxProto.onnx.IValueInfoProto {
  return { name: v.name, type: { tensorType: { elemType: onnxDType(v.dtype), shape: { dim: v.shape.map((d) => ({ dimValue: d })) } } } };
}

function rawTensor(name: string, dtype: DType, shape: Shape, data: ArrayBufferView): onnxProto.onnx.ITensorProto {
  return { name, dims: [...shape], dataType: onnxDType(dtype), rawData: new Uint8Array(data.buffer, data.byteOffset, data.byteLength) };
}

function attribute(name: string, v: OnnxAttr): onnxProto.onnx.IAttributeProto {
  const T = onnx.AttributeProto.AttributeType;
  if ('i' in v) return { name, type: T.INT, i: v.i };
  if ('f' in v) return { name, type: T.FLOAT, f: v.f };
  if ('s' in v) return { name, type: T.STRING, s: new TextEncoder().encode(v.s) };
  if ('ints' in v) return { name, type: T.INTS, ints: [...v.ints] };
  if ('floats' in v) return { name, type: T.FLOATS, floats: [...v.floats] };
  return { name, type: T.TENSOR, t: rawTensor(name, v.tensor.dtype, v.tensor.shape, v.tensor.data) };
}
