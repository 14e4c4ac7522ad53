/**
 * onnxruntime-node sessions: execution-provider choice with an honest report
 * of what was obtained, thread settings, and plain host tensors in and out.
 *
 * `run` blocks the calling thread while onnxruntime computes (the binding
 * does its work synchronously), so long jobs belong in a worker thread; this
 * module keeps no state that ties it to the main thread.
 */
import os from 'node:os';
import ort from 'onnxruntime-node';
import { RuntimeSetupError } from '../errors.ts';
import type { DType } from '../graph/graph.ts';
import type { EmittedModel, ValueSpec } from '../graph/onnx.ts';

export type ProviderName = 'cpu' | 'cuda' | 'dml' | 'coreml' | 'webgpu';

export interface SessionOptions {
  /** 'auto' tries the platform's accelerator first, then falls back to the CPU. */
  provider?: ProviderName | 'auto';
  /** Intra-op threads; default: the number of CPU cores. */
  threads?: number;
  optimization?: 'disabled' | 'basic' | 'extended' | 'all';
  /** onnxruntime's CPU arena keeps freed blocks for reuse: faster, higher peak RSS. */
  memoryArena?: boolean;
  /** Plan all intermediate buffers as one block per run (default off: slower and larger on our training graphs). */
  memoryPattern?: boolean;
  /** Write the optimised model here, for profiling. */
  optimizedModelPath?: string;
  profile?: boolean;
}

export type HostData = Float32Array | Uint16Array | BigInt64Array | Int32Array | Uint8Array;

export interface HostTensor {
  dtype: DType;
  shape: readonly number[];
  data: HostData;
}

export type Feeds = Readonly<Record<string, HostTensor | HostData>>;

const ORT_TYPE: Record<DType, ort.Tensor.Type> = {
  float32: 'float32',
  float16: 'float16',
  bfloat16: 'uint16' as ort.Tensor.Type,
  int64: 'int64',
  int32: 'int32',
  bool: 'bool',
  uint8: 'uint8',
};

/** Providers the installed onnxruntime-node binding was built with. */
export function availableProviders(): ProviderName[] {
  const known: ProviderName[] = ['cuda', 'dml', 'coreml', 'webgpu', 'cpu'];
  const listed = new Set(ort.listSupportedBackends().map((b) => b.name));
  return known.filter((p) => listed.has(p));
}

/** The accelerator to try first on this platform. */
function preferredProviders(): ProviderName[] {
  const have = availableProviders();
  const order: ProviderName[] = process.platform === 'win32' ? ['cuda', 'dml'] : process.platform === 'darwin' ? ['coreml'] : ['cuda'];
  return [...order.filter((p) => have.includes(p)), 'cpu'];
}

export class Session {
  private constructor(
    private readonly inner: ort.InferenceSession,
    readonly provider: ProviderName,
    /** Why the session runs on a different provider than asked, if it does. */
    readonly fallbackNote: string | null,
    readonly inputs: readonly ValueSpec[],
    readonly outputs: readonly ValueSpec[],
  ) {}

  static async create(model: EmittedModel, options: SessionOptions = {}): Promise<Session> {
    const asked = options.provider ?? 'auto';
    const candidates: ProviderName[] = asked === 'auto' ? preferredProviders() : [asked];
    if (asked !== 'auto' && asked !== 'cpu') candidates.push('cpu');
    const failures: string[] = [];
    for (const provider of candidates) {
      try {
        const inner = await ort.InferenceSession.create(model.bytes, sessionOptions(model, provider, options));
        const note = failures.length ? `running on ${provider}: ${failures.join('; ')}` : null;
        return new Session(inner, provider, note, model.inputs, model.outputs);
      } catch (e) {
        failures.push(`${provider} failed (${(e as Error).message.split('\n')[0]})`);
      }
    }
    throw new RuntimeSetupError(`could not create an onnxruntime session: ${failures.join('; ')}`);
  }

  /**
   * Runs the model; only the inputs the model declares are fed. Returns the
   * outputs named (default: all). Outputs given in `into` are written into
   * those preallocated buffers instead of new ones (no per-run allocation).
   */
  async run(feeds: Feeds, outputNames?: readonly string[], into?: Readonly<Record<string, HostData>>): Promise<Record<string, HostTensor>> {
    const ortFeeds: Record<string, ort.Tensor> = {};
    for (const spec of this.inputs) {
      const v = feeds[spec.name];
      if (v === undefined) throw new RuntimeSetupError(`missing input '${spec.name}' (${spec.dtype}[${spec.shape}])`);
      const data = 'data' in v && !ArrayBuffer.isView(v) ? v.data : (v as HostData);
      const expected = spec.shape.reduce((a, b) => a * b, 1);
      if (data.length !== expected) throw new RuntimeSetupError(`input '${spec.name}': ${data.length} values given, ${expected} expected for [${spec.shape}]`);
      ortFeeds[spec.name] = new ort.Tensor(ORT_TYPE[spec.dtype], data, spec.shape);
    }
    const names = outputNames ?? this.outputs.map((o) => o.name);
    const fetches: Record<string, ort.Tensor | null> = {};
    for (const spec of this.outputs) {
      if (!names.includes(spec.name)) continue;
      const buffer = into?.[spec.name];
      fetches[spec.name] = buffer ? new ort.Tensor(ORT_TYPE[spec.dtype], buffer, spec.shape) : null;
    }
    const result = await this.inner.run(ortFeeds, fetches);
    const out: Record<string, HostTensor> = {};
    for (const spec of this.outputs) {
      const t = result[spec.name];
      if (t) out[spec.name] = { dtype: spec.dtype, shape: spec.shape, data: into?.[spec.name] ?? (t.data as HostData) };
    }
    return out;
  }

  async release(): Promise<void> {
    await this.inner.release();
  }
}

function sessionOptions(model: EmittedModel, provider: ProviderName, o: SessionOptions): ort.InferenceSession.SessionOptions {
  const session: Record<string, string> = {
    // Spinning threads burn CPU between runs (a 22 ms step measured 8 ms without).
    'intra_op.allow_spinning': '0',
    'inter_op.allow_spinning': '0',
  };
  if (model.externalFolder) session.model_external_initializers_file_folder_path = model.externalFolder;
  return {
    executionProviders: [provider],
    intraOpNumThreads: o.threads ?? os.availableParallelism(),
    interOpNumThreads: 1,
    executionMode: 'sequential',
    graphOptimizationLevel: o.optimization ?? 'all',
    enableCpuMemArena: o.memoryArena ?? true,
    // Measured on training steps: the planned single block raised peak RSS by a third and was slower.
    enableMemPattern: o.memoryPattern ?? false,
    ...(o.optimizedModelPath ? { optimizedModelFilePath: o.optimizedModelPath } : {}),
    ...(o.profile ? { enableProfiling: true, profileFilePrefix: 'onnxruntime_profile' } : {}),
    extra: { session },
  };
}

/** Host tensor helpers. */
export function f32(shape: readonly number[], data: Float32Array | number[]): HostTensor {
  return { dtype: 'float32', shape, data: data instanceof Float32Array ? data : Float32Array.from(data) };
}
