/**
 * Sampler steps as graph code. The per-step scalars from schedule.ts enter as
 * operands: numbers (baked in) or, usually, graph inputs made by
 * `coefficientInputs` and fed by `coefficientFeeds`, so one compiled graph
 * serves every step. A step can be fused behind the UNet in the same graph
 * or run as a tiny graph of its own.
 *
 * Coefficients broadcast against x: scalars ([]) for one t per batch, or
 * [B, 1, 1, 1] for one t per sample (training batches).
 */
import { GraphBuildError } from '../errors.ts';
import * as F from '../graph/functional.ts';
import type { Operand } from '../graph/functional.ts';
import type { Graph, Shape, Tensor } from '../graph/graph.ts';
import type { NoiseCoefficients, StepCoefficients } from './schedule.ts';

export const STEP_KEYS = ['x0FromX', 'x0FromEps', 'prevFromX', 'prevFromEps', 'sigma'] as const;
export const NOISE_KEYS = ['signal', 'noise'] as const;

export type Operands<C> = { readonly [K in keyof C]: Operand };

export interface StepResult {
  prev: Tensor;
  /** The predicted clean sample x0. */
  x0: Tensor;
}

/**
 * prev = prevFromX x + prevFromEps eps + sigma noise; x0 = x0FromX x + x0FromEps eps.
 * Without `noise` the step is deterministic and sigma must be the number 0
 * (DDIM with eta 0), so a fed sigma can never be dropped silently.
 */
export function step(x: Tensor, eps: Tensor, c: Operands<StepCoefficients>, noise?: Tensor): StepResult {
  const x0 = F.add(F.mul(x, c.x0FromX), F.mul(eps, c.x0FromEps));
  const mean = F.add(F.mul(x, c.prevFromX), F.mul(eps, c.prevFromEps));
  if (!noise) {
    if (c.sigma !== 0) throw new GraphBuildError('sampler step: sigma is not 0 but no noise tensor was given; pass the noise, or sigma 0 for a deterministic step');
    return { prev: mean, x0 };
  }
  return { prev: c.sigma === 0 ? mean : F.add(mean, F.mul(noise, c.sigma)), x0 };
}

/** DDIM and DDPM steps differ only in their coefficients (schedule.ts). */
export const ddimStep = step;
export const ddpmStep = step;

/** x_t = signal x0 + noise eps (diffusers `add_noise`). */
export function addNoise(x0: Tensor, noise: Tensor, c: Operands<NoiseCoefficients>): Tensor {
  return F.add(F.mul(x0, c.signal), F.mul(noise, c.noise));
}

/** v = signal eps - noise x0 (diffusers `get_velocity`). */
export function velocity(x0: Tensor, noise: Tensor, c: Operands<NoiseCoefficients>): Tensor {
  return F.sub(F.mul(noise, c.signal), F.mul(x0, c.noise));
}

/** One float32 graph input `${prefix}.${key}` per key, of the given (broadcast) shape. */
export function coefficientInputs<K extends string>(g: Graph, keys: readonly K[], prefix: string, shape: Shape = []): Record<K, Tensor> {
  return Object.fromEntries(keys.map((k) => [k, g.input(`${prefix}.${k}`, shape)])) as Record<K, Tensor>;
}

/** Feeds for `coefficientInputs`: one coefficient set, or one per sample for a [B, 1, ...] shape. */
export function coefficientFeeds<K extends string>(
  keys: readonly K[],
  prefix: string,
  values: Readonly<Record<K, number>> | readonly Readonly<Record<K, number>>[],
): Record<string, Float32Array> {
  const list: readonly Readonly<Record<K, number>>[] = Array.isArray(values) ? values : [values as Readonly<Record<K, number>>];
  return Object.fromEntries(keys.map((k) => [`${prefix}.${k}`, Float32Array.from(list, (v) => v[k])]));
}
