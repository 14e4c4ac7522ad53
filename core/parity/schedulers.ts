/**
 * Parity runners for the `scheduler_ddim` and `scheduler_ddpm` cases: the
 * tables and timesteps come from schedule.ts directly; every tensor output
 * goes through a small compiled graph (samplers.ts) with the step scalars
 * fed as inputs, one graph for all steps.
 */
import { FileFormatError } from '../errors.ts';
import type { Tensor } from '../graph/graph.ts';
import { Graph } from '../graph/graph.ts';
import { emitOnnx } from '../graph/onnx.ts';
import { Session, type Feeds } from '../runtime/session.ts';
import { NOISE_KEYS, STEP_KEYS, addNoise, coefficientFeeds, coefficientInputs, step, velocity } from '../diffusion/samplers.ts';
import {
  ddimStepCoefficients, ddimTimesteps, ddpmStepCoefficients, ddpmTimesteps, noiseCoefficients, parseSchedulerConfig, scheduleOf,
  type SchedulerConfig, type StepInfo,
} from '../diffusion/schedule.ts';
import type { FixtureCase, OutputValue, ParityRunner } from './fixture.ts';

export const runSchedulerDdim: ParityRunner = async (c) => {
  const cfg = parseSchedulerConfig(c.json.config);
  const s = scheduleOf(cfg);
  const n = param(c, 'step_num_inference_steps') as number;
  const ts = intInput(c, 'step.t');
  const noise = c.input('variance_noise') as Float32Array;
  const eta0 = await runSteps(c, ts.map((t) => ddimStepCoefficients(cfg, t, n, 0)), () => noise);
  const eta1 = await runSteps(c, ts.map((t) => ddimStepCoefficients(cfg, t, n, 1)), () => noise);
  return {
    ...tables(cfg),
    final_alpha_cumprod: { shape: [], data: Float32Array.of(s.finalAlphaCumprod) },
    ...timestepOutputs(c, cfg, ddimTimesteps),
    'step.prev_sample': eta0.prev,
    'step.pred_original_sample': eta0.x0,
    'step.eta1.prev_sample': eta1.prev,
    ...(await runNoising(c, cfg, false)),
  };
};

export const runSchedulerDdpm: ParityRunner = async (c) => {
  const cfg = parseSchedulerConfig(c.json.config);
  const n = param(c, 'step_num_inference_steps') as number;
  const ts = intInput(c, 'step.t');
  const noise = c.input('step.variance_noise') as Float32Array;
  const infos = ts.map((t) => ddpmStepCoefficients(cfg, t, n));
  const steps = await runSteps(c, infos, (k, size) => noise.subarray(k * size, (k + 1) * size));
  return {
    ...tables(cfg),
    ...timestepOutputs(c, cfg, ddpmTimesteps),
    'step.prev_sample': steps.prev,
    'step.pred_original_sample': steps.x0,
    'step.variance': { shape: [ts.length], data: Float32Array.from(infos, (i) => i.variance) },
    ...(await runNoising(c, cfg, true)),
  };
};

function tables(cfg: SchedulerConfig): Record<string, OutputValue> {
  const s = scheduleOf(cfg);
  return {
    betas: { shape: [s.betas.length], data: s.betas.slice() },
    alphas_cumprod: { shape: [s.alphasCumprod.length], data: s.alphasCumprod.slice() },
  };
}

function timestepOutputs(c: FixtureCase, cfg: SchedulerConfig, timesteps: (cfg: SchedulerConfig, n: number) => number[]): Record<string, OutputValue> {
  const counts = param(c, 'timestep_counts') as number[];
  return Object.fromEntries(
    counts.map((n) => {
      const ts = timesteps(cfg, n);
      return [`timesteps.${n}`, { shape: [ts.length], data: BigInt64Array.from(ts, (t) => BigInt(t)) }];
    }),
  );
}

/** Runs one step graph per t (same sample and model output), stacked as [steps, ...sample shape]. */
async function runSteps(c: FixtureCase, infos: StepInfo[], noiseFor: (k: number, size: number) => Float32Array) {
  const shape = c.json.inputs.sample.shape;
  const g = new Graph();
  const [x, eps, noise] = ['x', 'eps', 'noise'].map((name) => g.input(name, shape));
  const out = step(x, eps, coefficientInputs(g, STEP_KEYS, 'step'), noise);
  const size = x.size;
  const prev = new Float32Array(infos.length * size);
  const x0 = new Float32Array(infos.length * size);
  await withSession({ prev: out.prev, x0: out.x0 }, async (run) => {
    for (const [k, info] of infos.entries()) {
      const r = await run({ x: c.input('sample'), eps: c.input('model_output'), noise: noiseFor(k, size), ...coefficientFeeds(STEP_KEYS, 'step', info) });
      prev.set(r.prev, k * size);
      x0.set(r.x0, k * size);
    }
  });
  const stacked = [infos.length, ...shape];
  return { prev: { shape: stacked, data: prev }, x0: { shape: stacked, data: x0 } };
}

/** add_noise (and get_velocity) with one t per batch element: coefficients of shape [B, 1, 1, 1]. */
async function runNoising(c: FixtureCase, cfg: SchedulerConfig, withVelocity: boolean): Promise<Record<string, OutputValue>> {
  const shape = c.json.inputs['add_noise.x0'].shape;
  const ts = intInput(c, 'add_noise.t');
  const g = new Graph();
  const [x0, noise] = [g.input('x0', shape), g.input('noise', shape)];
  const coeffs = coefficientInputs(g, NOISE_KEYS, 'noise', [shape[0], ...shape.slice(1).map(() => 1)]);
  const outputs: Record<string, Tensor> = { 'add_noise.noisy': addNoise(x0, noise, coeffs) };
  if (withVelocity) outputs.velocity = velocity(x0, noise, coeffs);
  const feeds = { x0: c.input('add_noise.x0'), noise: c.input('add_noise.noise'), ...coefficientFeeds(NOISE_KEYS, 'noise', ts.map((t) => noiseCoefficients(cfg, t))) };
  const result = await withSession(outputs, (run) => run(feeds as Feeds));
  return Object.fromEntries(Object.keys(outputs).map((name) => [name, { shape, data: result[name] }]));
}

type RunFn = (feeds: Feeds) => Promise<Record<string, Float32Array>>;

async function withSession<R>(outputs: Record<string, Tensor>, body: (run: RunFn) => Promise<R>): Promise<R> {
  // Elementwise float32 on the CPU: exact IEEE arithmetic, and too small to be worth a GPU.
  const session = await Session.create(emitOnnx(outputs, 'scheduler'), { provider: 'cpu', threads: 1 });
  try {
    return await body(async (feeds) => {
      const r = await session.run(feeds);
      return Object.fromEntries(Object.entries(r).map(([k, v]) => [k, v.data as Float32Array]));
    });
  } finally {
    await session.release();
  }
}

function param(c: FixtureCase, name: string): unknown {
  const v = c.json.params?.[name];
  if (v === undefined) throw new FileFormatError(c.dir, `${c.dir}/fixture.json: params.${name} is missing`);
  return v;
}

function intInput(c: FixtureCase, name: string): number[] {
  const v = c.input(name);
  if (!(v instanceof BigInt64Array)) throw new FileFormatError(c.dir, `${c.dir}: input.${name} should be int64`);
  return Array.from(v, (t) => Number(t));
}
