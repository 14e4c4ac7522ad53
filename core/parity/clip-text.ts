/**
 * The `clip_text` reference case: CLIPTextModel(input_ids, output_hidden_states=True)
 * compiled from the graph API and run on onnxruntime's CPU provider.
 */
import { Graph, type Tensor } from '../graph/graph.ts';
import { emitOnnx } from '../graph/onnx.ts';
import { openSafetensors } from '../io/safetensors.ts';
import { clipTextEncoder, parseClipTextConfig, type ClipTextConfig, type ClipTextOptions } from '../nn/clip-text.ts';
import { ParamBinder, prefixResolver } from '../nn/params.ts';
import { Session, type HostTensor } from '../runtime/session.ts';
import type { OutputValue, ParityRunner } from './fixture.ts';

export interface ClipTextRunOptions extends ClipTextOptions {
  /** Scope of the text transformer in the file (default `text_model`; '' for checkpoints without that level). */
  prefix?: string;
}

/**
 * Builds the text encoder over the checkpoint at `weightsPath` for the shape
 * of `inputIds`, runs it once, and returns `last_hidden_state`,
 * `pooler_output` and, when asked, `hidden_states.{i}`.
 */
export async function runClipTextOnce(weightsPath: string, cfg: ClipTextConfig, inputIds: HostTensor, options: ClipTextRunOptions = {}): Promise<Record<string, HostTensor>> {
  const file = openSafetensors(weightsPath);
  try {
    const graph = new Graph();
    const binder = new ParamBinder(graph, prefixResolver([file]));
    const ids = graph.input('input_ids', inputIds.shape, 'int64');
    const out = clipTextEncoder(binder.scope(options.prefix ?? 'text_model'), cfg, ids, options);
    binder.finish('CLIPTextModel');
    const outputs: Record<string, Tensor> = { last_hidden_state: out.lastHiddenState, pooler_output: out.pooled };
    out.hiddenStates?.forEach((t, i) => (outputs[`hidden_states.${i}`] = t));
    const session = await Session.create(emitOnnx(outputs, 'clip_text'), { provider: 'cpu' });
    try {
      return await session.run({ input_ids: inputIds });
    } finally {
      await session.release();
    }
  } finally {
    file.close();
  }
}

export const runClipText: ParityRunner = async (c) => {
  const cfg = parseClipTextConfig(c.json.config, `${c.dir}/fixture.json`);
  const ids: HostTensor = { dtype: 'int64', shape: c.json.inputs.input_ids.shape, data: c.input('input_ids') as BigInt64Array };
  const out = await runClipTextOnce(c.weightsPath(), cfg, ids, { outputHiddenStates: true });
  return Object.fromEntries(Object.entries(out).map(([k, v]) => [k, { shape: v.shape, data: v.data as Float32Array } satisfies OutputValue]));
};
