/**
 * Noise schedules and sampler step coefficients, as small pure functions on
 * scalars: diffusers' DDIMScheduler and DDPMScheduler (0.27) with the SD 1.x
 * configuration. No tensor passes through here. Every step is
 *
 *   x0   = x0FromX   * x + x0FromEps   * eps
 *   prev = prevFromX * x + prevFromEps * eps + sigma * noise
 *
 * and these functions compute its five scalars; samplers.ts applies them to
 * tensors inside a graph, where they are inputs fed per step.
 *
 * Precision: the tables (betas, alphas_cumprod) are diffusers' float32 values
 * bit for bit. The step scalars are computed in float64 from those float32
 * alphas and rounded once when fed; diffusers rounds each intermediate to
 * float32, so we land nearer its own float64 result than it does.
 */
import { LetheError } from '../errors.ts';

/** A scheduler setting Lethe does not support, or a bad value. */
export class SchedulerConfigError extends LetheError {
  constructor(
    /** The diffusers config key (or `num_inference_steps`) at fault. */
    readonly key: string,
    message: string,
  ) {
    super('scheduler-config', message);
  }
}

/**
 * The subset of diffusers' `scheduler_config.json` that varies between SD 1.x
 * setups; key names as in the file. Refused when set: `trained_betas`,
 * `clip_sample`, `thresholding`, `rescale_betas_zero_snr`, any prediction
 * other than epsilon.
 */
export interface SchedulerConfig {
  readonly num_train_timesteps: number;
  readonly beta_start: number;
  readonly beta_end: number;
  readonly beta_schedule: 'scaled_linear' | 'linear';
  readonly timestep_spacing: 'leading' | 'trailing' | 'linspace';
  readonly steps_offset: number;
  /** DDIM: alpha_cumprod "before" t = 0 is 1 (true) or alphas_cumprod[0] (false). */
  readonly set_alpha_to_one: boolean;
  readonly prediction_type: 'epsilon';
  /** DDPM posterior variance. */
  readonly variance_type: 'fixed_small' | 'fixed_large';
}

export const SD1_SCHEDULER: SchedulerConfig = Object.freeze({
  num_train_timesteps: 1000,
  beta_start: 0.00085,
  beta_end: 0.012,
  beta_schedule: 'scaled_linear',
  timestep_spacing: 'leading',
  steps_offset: 1,
  set_alpha_to_one: false,
  prediction_type: 'epsilon',
  variance_type: 'fixed_small',
});

/**
 * Reads a diffusers scheduler config (the parsed JSON). Missing keys take the
 * SD 1.x values; unknown keys (`_class_name`, `skip_prk_steps`, ...) are ignored.
 */
export function parseSchedulerConfig(json: unknown): SchedulerConfig {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw new SchedulerConfigError('(config)', 'a scheduler config must be a JSON object (diffusers scheduler_config.json)');
  }
  const j = json as Record<string, unknown>;
  const get = <T>(key: keyof SchedulerConfig, ok: (v: unknown) => boolean, what: string): T => {
    const v = j[key] ?? SD1_SCHEDULER[key];
    if (!ok(v)) throw new SchedulerConfigError(key, `scheduler config: ${key} = ${JSON.stringify(v)} is not ${what}`);
    return v as T;
  };
  const oneOf = (...values: string[]) => (v: unknown) => values.includes(v as string);
  const isInt = (min: number) => (v: unknown) => Number.isSafeInteger(v) && (v as number) >= min;
  const isBeta = (v: unknown) => typeof v === 'number' && v > 0 && v < 1;

  const prediction = j.prediction_type ?? 'epsilon';
  if (prediction === 'v_prediction') {
    throw new SchedulerConfigError(
      'prediction_type',
      'scheduler config: prediction_type "v_prediction" is for SD 2.x v-models (768 px), which Lethe does not support; use an SD 1.x (epsilon-prediction) model',
    );
  }
  if (prediction !== 'epsilon') {
    throw new SchedulerConfigError('prediction_type', `scheduler config: prediction_type ${JSON.stringify(prediction)} is not supported; SD 1.x models predict "epsilon"`);
  }
  const refuse = (key: string, why: string) => {
    const v = j[key];
    if (v !== undefined && v !== null && v !== false) throw new SchedulerConfigError(key, `scheduler config: ${key} = ${JSON.stringify(v)} is not supported (${why})`);
  };
  refuse('trained_betas', 'SD 1.x uses the scaled_linear schedule');
  refuse('clip_sample', 'SD 1.x latents are not clipped; set it to false');
  refuse('thresholding', 'dynamic thresholding is for pixel-space models; set it to false');
  refuse('rescale_betas_zero_snr', 'zero-terminal-SNR schedules need v-prediction models');

  const cfg: SchedulerConfig = {
    num_train_timesteps: get('num_train_timesteps', isInt(2), 'an integer >= 2'),
    beta_start: get('beta_start', isBeta, 'a number in (0, 1)'),
    beta_end: get('beta_end', isBeta, 'a number in (0, 1)'),
    beta_schedule: get('beta_schedule', oneOf('scaled_linear', 'linear'), '"scaled_linear" or "linear" (the SD 1.x schedules)'),
    timestep_spacing: get('timestep_spacing', oneOf('leading', 'trailing', 'linspace'), '"leading", "trailing" or "linspace"'),
    steps_offset: get('steps_offset', isInt(0), 'an integer >= 0'),
    set_alpha_to_one: get('set_alpha_to_one', (v) => typeof v === 'boolean', 'true or false'),
    prediction_type: 'epsilon',
    variance_type: get('variance_type', oneOf('fixed_small', 'fixed_large'), '"fixed_small" or "fixed_large"'),
  };
  if (cfg.beta_end < cfg.beta_start) throw new SchedulerConfigError('beta_end', `scheduler config: beta_end ${cfg.beta_end} is below beta_start ${cfg.beta_start}`);
  return Object.freeze(cfg);
}

// --- tables -------------------------------------------------------------------

/**
 * `torch.linspace(start, end, steps, dtype=torch.float32)` on the CPU, bit for
 * bit as PyTorch 1.13's AVX2 kernel computes it (the reference machine):
 * step = (end - start) / (steps - 1) in float32; the first half counts up from
 * start, the second half down from end. Whole pairs of 8-lane vectors take
 * base + k*step, with base computed once at the vector's first index; the
 * tail is per element. GCC fuses each a + b*c into one FMA (one rounding).
 */
export function torchLinspaceF32(start: number, end: number, steps: number): Float32Array {
  const fr = Math.fround;
  const [s, e] = [fr(start), fr(end)];
  const out = new Float32Array(steps);
  if (steps === 1) out[0] = s;
  if (steps <= 1) return out;
  const step = fr(fr(e - s) / (steps - 1));
  const half = Math.floor(steps / 2);
  const at = (i: number) => (i < half ? fmaF32(s, step, i) : fmaF32(e, -step, steps - 1 - i));
  const LANES = 8;
  let i = 0;
  for (; i <= steps - 2 * LANES; i += 2 * LANES) {
    for (const v of [i, i + LANES]) {
      const base = at(v);
      for (let k = 0; k < LANES; k++) out[v + k] = k === 0 ? base : fmaF32(base, step, k);
    }
  }
  for (; i < steps; i++) out[i] = at(i);
  return out;
}

/** betas = linspace(sqrt(beta_start), sqrt(beta_end), T)^2, in float32. */
export function scaledLinearBetas(cfg: SchedulerConfig): Float32Array {
  return torchLinspaceF32(Math.sqrt(cfg.beta_start), Math.sqrt(cfg.beta_end), cfg.num_train_timesteps).map((r) => r * r);
}

/** betas = linspace(beta_start, beta_end, T), in float32. */
export function linearBetas(cfg: SchedulerConfig): Float32Array {
  return torchLinspaceF32(cfg.beta_start, cfg.beta_end, cfg.num_train_timesteps);
}

export function betasOf(cfg: SchedulerConfig): Float32Array {
  return cfg.beta_schedule === 'scaled_linear' ? scaledLinearBetas(cfg) : linearBetas(cfg);
}

/**
 * cumprod(1 - betas) as torch.cumprod does it on the CPU: 1 - beta in float32,
 * the running product in float64 (its CPU accumulator type), each entry
 * rounded to float32.
 */
export function alphasCumprod(betas: Float32Array): Float32Array {
  const out = new Float32Array(betas.length);
  let acc = 1;
  for (let i = 0; i < betas.length; i++) out[i] = acc *= Math.fround(1 - betas[i]);
  return out;
}

/** The float32 tables of a config, built once per config object. */
export interface Schedule {
  readonly betas: Float32Array;
  readonly alphasCumprod: Float32Array;
  /** DDIM's alpha_cumprod before t = 0: 1 or alphas_cumprod[0] (set_alpha_to_one). */
  readonly finalAlphaCumprod: number;
}

const schedules = new WeakMap<SchedulerConfig, Schedule>();

/** Shared, cached arrays: do not write to them. */
export function scheduleOf(cfg: SchedulerConfig): Schedule {
  let s = schedules.get(cfg);
  if (!s) {
    const betas = betasOf(cfg);
    const ac = alphasCumprod(betas);
    s = Object.freeze({ betas, alphasCumprod: ac, finalAlphaCumprod: cfg.set_alpha_to_one ? 1 : ac[0] });
    schedules.set(cfg, s);
  }
  return s;
}

// --- timesteps ------------------------------------------------------------------

/**
 * The descending timesteps of an n-step run (diffusers `set_timesteps`):
 * "leading": (0..n-1) * (T // n) + steps_offset (SD 1.x, n = 50: 981, ..., 1);
 * "trailing": round(arange(T, 0, -T/n)) - 1; "linspace": round(linspace(0, T-1, n)).
 * Rounding is numpy's, half to even.
 */
export function ddimTimesteps(cfg: SchedulerConfig, n: number): number[] {
  const T = cfg.num_train_timesteps;
  checkSteps(cfg, n);
  let ts: number[];
  if (cfg.timestep_spacing === 'leading') {
    const ratio = Math.floor(T / n);
    ts = Array.from({ length: n }, (_, i) => n - 1 - i).map((i) => i * ratio + cfg.steps_offset);
  } else if (cfg.timestep_spacing === 'trailing') {
    const delta = T + -T / n - T; // numpy's arange fills start + i * (second - first)
    const count = Math.ceil(-T / (-T / n));
    ts = Array.from({ length: count }, (_, i) => roundHalfEven(T + i * delta) - 1);
  } else {
    const step = (T - 1) / Math.max(1, n - 1);
    ts = Array.from({ length: n }, (_, i) => (n > 1 && i === n - 1 ? T - 1 : roundHalfEven(i * step))).reverse();
  }
  const bad = ts.find((t) => t < 0 || t >= T);
  if (bad !== undefined) {
    throw new SchedulerConfigError('num_inference_steps', `${n} steps with ${cfg.timestep_spacing} spacing and steps_offset ${cfg.steps_offset} reach timestep ${bad}, outside 0..${T - 1}; use fewer steps`);
  }
  return ts;
}

/** DDPMScheduler.set_timesteps: the same rule as DDIM's. */
export function ddpmTimesteps(cfg: SchedulerConfig, n: number): number[] {
  return ddimTimesteps(cfg, n);
}

/** The timestep a step from t lands on: t - T // n (negative past the end). */
export function prevTimestep(cfg: SchedulerConfig, t: number, n: number): number {
  return t - Math.floor(cfg.num_train_timesteps / n);
}

// --- step coefficients ------------------------------------------------------------

/** The scalars of one step (see the file comment); samplers.ts applies them. */
export interface StepCoefficients {
  readonly x0FromX: number;
  readonly x0FromEps: number;
  readonly prevFromX: number;
  readonly prevFromEps: number;
  readonly sigma: number;
}

export interface StepInfo extends StepCoefficients {
  readonly t: number;
  readonly prevT: number;
  readonly alphaProd: number;
  readonly alphaProdPrev: number;
  /** The step's posterior variance (DDIM's sigma = eta * sqrt(variance)). */
  readonly variance: number;
}

/**
 * DDIM (DDIMScheduler.step, epsilon prediction): x0 = (x - sqrt(1-a) eps) / sqrt(a);
 * prev = sqrt(a') x0 + sqrt(1 - a' - sigma^2) eps + sigma noise, with
 * sigma = eta * sqrt((1-a')/(1-a) (1 - a/a')) and a' = alphas_cumprod[t - T//n]
 * (finalAlphaCumprod below 0).
 */
export function ddimStepCoefficients(cfg: SchedulerConfig, t: number, n: number, eta = 0): StepInfo {
  checkStepArgs(cfg, t, n);
  if (!(eta >= 0 && Number.isFinite(eta))) throw new SchedulerConfigError('eta', `DDIM eta must be a finite number >= 0, got ${eta}`);
  const s = scheduleOf(cfg);
  const prevT = prevTimestep(cfg, t, n);
  const a = s.alphasCumprod[t];
  const ap = prevT >= 0 ? s.alphasCumprod[prevT] : s.finalAlphaCumprod;
  const variance = ((1 - ap) / (1 - a)) * (1 - a / ap);
  const sigma = eta * Math.sqrt(variance);
  const direction = Math.sqrt(Math.max(0, 1 - ap - sigma * sigma));
  const [x0FromX, x0FromEps] = [1 / Math.sqrt(a), -Math.sqrt(1 - a) / Math.sqrt(a)];
  const prevFromX = Math.sqrt(ap) * x0FromX;
  const prevFromEps = Math.sqrt(ap) * x0FromEps + direction;
  return { t, prevT, alphaProd: a, alphaProdPrev: ap, variance, x0FromX, x0FromEps, prevFromX, prevFromEps, sigma };
}

/**
 * DDPM (DDPMScheduler.step, epsilon prediction): the posterior mean
 * sqrt(a') beta_t / (1-a) x0 + sqrt(alpha_t) (1-a') / (1-a) x, with
 * alpha_t = a / a', beta_t = 1 - alpha_t, a' = alphas_cumprod[t - T//n] (1 below 0),
 * plus sqrt(variance) noise when t > 0. fixed_small: variance =
 * max(1e-20, (1-a')/(1-a) beta_t); fixed_large: beta_t.
 */
export function ddpmStepCoefficients(cfg: SchedulerConfig, t: number, n: number): StepInfo {
  checkStepArgs(cfg, t, n);
  const s = scheduleOf(cfg);
  const prevT = prevTimestep(cfg, t, n);
  const a = s.alphasCumprod[t];
  const ap = prevT >= 0 ? s.alphasCumprod[prevT] : 1;
  const [alphaT, betaT] = [a / ap, 1 - a / ap];
  const variance = cfg.variance_type === 'fixed_small' ? Math.max(1e-20, ((1 - ap) / (1 - a)) * betaT) : betaT;
  const [x0FromX, x0FromEps] = [1 / Math.sqrt(a), -Math.sqrt(1 - a) / Math.sqrt(a)];
  const fromX0 = (Math.sqrt(ap) * betaT) / (1 - a);
  const fromX = (Math.sqrt(alphaT) * (1 - ap)) / (1 - a);
  return {
    t, prevT, alphaProd: a, alphaProdPrev: ap, variance,
    x0FromX, x0FromEps,
    prevFromX: fromX0 * x0FromX + fromX,
    prevFromEps: fromX0 * x0FromEps,
    sigma: t > 0 ? Math.sqrt(variance) : 0,
  };
}

/** Forward noising at t: x_t = signal * x0 + noise * eps; v = signal * eps - noise * x0. */
export interface NoiseCoefficients {
  /** sqrt(alphas_cumprod[t]) */
  readonly signal: number;
  /** sqrt(1 - alphas_cumprod[t]) */
  readonly noise: number;
}

export function noiseCoefficients(cfg: SchedulerConfig, t: number): NoiseCoefficients {
  checkTimestep(cfg, t);
  const a = scheduleOf(cfg).alphasCumprod[t];
  return { signal: Math.sqrt(a), noise: Math.sqrt(1 - a) };
}

// --- helpers ----------------------------------------------------------------------

function checkSteps(cfg: SchedulerConfig, n: number): void {
  if (!Number.isSafeInteger(n) || n < 1 || n > cfg.num_train_timesteps) {
    throw new SchedulerConfigError('num_inference_steps', `the step count must be an integer from 1 to ${cfg.num_train_timesteps}, got ${n}`);
  }
}

function checkTimestep(cfg: SchedulerConfig, t: number): void {
  if (!Number.isSafeInteger(t) || t < 0 || t >= cfg.num_train_timesteps) {
    throw new SchedulerConfigError('timestep', `timestep ${t} is not an integer in 0..${cfg.num_train_timesteps - 1}`);
  }
}

function checkStepArgs(cfg: SchedulerConfig, t: number, n: number): void {
  checkSteps(cfg, n);
  checkTimestep(cfg, t);
}

/** numpy.round: halves go to the even neighbour. */
function roundHalfEven(x: number): number {
  const r = Math.round(x);
  return r - x === 0.5 && r % 2 !== 0 ? r - 1 : r;
}

const f64 = new Float64Array(1);
const bits = new BigInt64Array(f64.buffer);

/**
 * float32 fma(b, k, a) = round32(a + b*k) for float32 a, b and an integer k:
 * b*k is exact in float64; TwoSum gives the rounding error of a + b*k, and a
 * sum that sits exactly on a float32 tie is nudged one float64 ulp toward the
 * true value, so the one rounding to float32 is the correct one.
 */
function fmaF32(a: number, b: number, k: number): number {
  const p = b * k;
  const s = a + p;
  const z = s - a;
  const err = a - (s - z) + (p - z);
  if (err === 0) return Math.fround(s);
  f64[0] = s;
  bits[0] += s > 0 === err > 0 ? 1n : -1n;
  return Math.fround(f64[0]);
}
