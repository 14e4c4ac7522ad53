/**
 * Runners for the `unet` and `unet_grad` fixture components: load the case's
 * weights, build the UNet graph (plus loss and gradients for unet_grad), emit
 * it, run it on the CPU and return the outputs under their fixture names.
 */
import { grad } from '../graph/autodiff.ts';
import * as F from '../graph/functional.ts';
import { Graph, type Tensor } from '../graph/graph.ts';
import { emitOnnx } from '../graph/onnx.ts';
import { openSafetensors, type SafetensorsFile } from '../io/safetensors.ts';
import { ParamBinder, prefixResolver } from '../nn/params.ts';
import { parseUNetConfig, unet } from '../nn/unet.ts';
import { Session, type HostData } from '../runtime/session.ts';
import type { FixtureCase, OutputValue, ParityRunner } from './fixture.ts';

interface UNetCase {
  graph: Graph;
  binder: ParamBinder;
  x: Tensor;
  encoderHiddenStates: Tensor;
  out: Tensor;
  feeds: Record<string, HostData>;
}

/** Builds `unet(x, t, encoder_hidden_states)` over the case's weights; every parameter trains when `trainable`. */
function buildCase(c: FixtureCase, weights: SafetensorsFile, trainable: boolean): UNetCase {
  const cfg = parseUNetConfig(c.json.config);
  const graph = new Graph();
  const binder = new ParamBinder(graph, prefixResolver([weights]), { trainable: () => trainable });
  const shape = (name: string): number[] => c.json.inputs[name].shape;
  const x = graph.input('x', shape('x'));
  const t = graph.input('t', shape('t'));
  const encoderHiddenStates = graph.input('encoder_hidden_states', shape('encoder_hidden_states'));
  const out = unet(binder.scope(''), cfg, x, t, encoderHiddenStates);
  binder.finish('UNet');
  const feeds: Record<string, HostData> = {
    x: c.input('x') as Float32Array,
    t: Float32Array.from(Array.from(c.input('t'), Number)),
    encoder_hidden_states: c.input('encoder_hidden_states') as Float32Array,
  };
  for (const name of binder.trainableNames) feeds[name] = binder.initialValue(name);
  return { graph, binder, x, encoderHiddenStates, out, feeds };
}

async function run(outputs: Record<string, Tensor>, feeds: Record<string, HostData>): Promise<Record<string, OutputValue>> {
  const session = await Session.create(emitOnnx(outputs, 'unet'), { provider: 'cpu' });
  try {
    const result = await session.run(feeds);
    return Object.fromEntries(Object.entries(result).map(([name, v]) => [name, { shape: v.shape, data: v.data as Float32Array }]));
  } finally {
    await session.release();
  }
}

async function withWeights<T>(c: FixtureCase, body: (weights: SafetensorsFile) => Promise<T>): Promise<T> {
  const weights = openSafetensors(c.weightsPath());
  try {
    return await body(weights);
  } finally {
    weights.close();
  }
}

/** `unet`: out = unet(x, t, encoder_hidden_states).sample. */
export const runUNetForward: ParityRunner = (c) =>
  withWeights(c, async (weights) => {
    const { out, feeds } = buildCase(c, weights, false);
    return run({ out }, feeds);
  });

/** `unet_grad`: out, loss = mean((out - target)^2), and its gradient wrt x, encoder_hidden_states and every parameter. */
export const runUNetGrad: ParityRunner = (c) =>
  withWeights(c, async (weights) => {
    const { graph, binder, x, encoderHiddenStates, out, feeds } = buildCase(c, weights, true);
    const target = graph.input('target', out.shape);
    const loss = F.mse(out, target);
    const names = binder.trainableNames;
    const [gx, gctx, ...gparams] = grad(loss, [x, encoderHiddenStates, ...names.map((n) => graph.byName(n)!)]);
    const outputs: Record<string, Tensor> = { out, loss, 'grad.x': gx, 'grad.encoder_hidden_states': gctx };
    names.forEach((n, k) => (outputs[`grad.${n}`] = gparams[k]));
    return run(outputs, { ...feeds, target: c.input('target') as Float32Array });
  });
