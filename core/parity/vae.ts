/**
 * The `vae_decode` and `vae_encode` reference cases: AutoencoderKL compiled
 * from the graph API and run on onnxruntime's CPU provider.
 */
import { Graph, type Tensor } from '../graph/graph.ts';
import { emitOnnx } from '../graph/onnx.ts';
import { openSafetensors, type SafetensorsFile } from '../io/safetensors.ts';
import { ParamBinder, prefixResolver, type KeyResolver } from '../nn/params.ts';
import { parseVaeConfig, vaeDecode, vaeEncode, type VaeConfig } from '../nn/vae.ts';
import { Session, type HostTensor } from '../runtime/session.ts';
import type { FixtureCase, OutputValue, ParityRunner } from './fixture.ts';

export interface VaeRunOptions {
  /** Adapts the file's keys to diffusers names (default: the file's keys as they are). */
  resolver?: (files: readonly SafetensorsFile[]) => KeyResolver;
}

/**
 * Builds the decoder (input `z`, output `image`) or the encoder (input
 * `image`, outputs `mean`, `logvar`, `std`) over the checkpoint at
 * `weightsPath` for the shape of `input`, and runs it once.
 */
export async function runVaeOnce(weightsPath: string, cfg: VaeConfig, part: 'decode' | 'encode', input: HostTensor, options: VaeRunOptions = {}): Promise<Record<string, HostTensor>> {
  const file = openSafetensors(weightsPath);
  try {
    const graph = new Graph();
    const binder = new ParamBinder(graph, (options.resolver ?? prefixResolver)([file]));
    const scope = binder.scope('');
    const name = part === 'decode' ? 'z' : 'image';
    const x = graph.input(name, input.shape);
    const outputs: Record<string, Tensor> = part === 'decode' ? { image: vaeDecode(scope, cfg, x) } : { ...vaeEncode(scope, cfg, x) };
    binder.finish('AutoencoderKL');
    const session = await Session.create(emitOnnx(outputs, `vae_${part}`), { provider: 'cpu' });
    try {
      return await session.run({ [name]: input });
    } finally {
      await session.release();
    }
  } finally {
    file.close();
  }
}

async function runCase(c: FixtureCase, part: 'decode' | 'encode', inputName: string): Promise<Record<string, OutputValue>> {
  const cfg = parseVaeConfig(c.json.config, `${c.dir}/fixture.json`);
  const input: HostTensor = { dtype: 'float32', shape: c.json.inputs[inputName].shape, data: c.input(inputName) as Float32Array };
  const out = await runVaeOnce(c.weightsPath(), cfg, part, input);
  return Object.fromEntries(Object.entries(out).map(([k, v]) => [k, { shape: v.shape, data: v.data as Float32Array } satisfies OutputValue]));
}

export const runVaeDecode: ParityRunner = (c) => runCase(c, 'decode', 'z');
export const runVaeEncode: ParityRunner = (c) => runCase(c, 'encode', 'image');
