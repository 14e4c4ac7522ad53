import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { LetheError } from '../core/errors.ts';
import { Graph } from '../core/graph/graph.ts';
import { emitOnnx } from '../core/graph/onnx.ts';
import { Session } from '../core/runtime/session.ts';
import { STEP_KEYS, coefficientFeeds, coefficientInputs, ddimStep } from '../core/diffusion/samplers.ts';
import {
  SD1_SCHEDULER, SchedulerConfigError, ddimStepCoefficients, ddimTimesteps, ddpmStepCoefficients, parseSchedulerConfig, scheduleOf,
  torchLinspaceF32, type SchedulerConfig,
} from '../core/diffusion/schedule.ts';
import { compareOutputs, loadFixture, type ParityRunner } from '../core/parity/fixture.ts';
import { runSchedulerDdim, runSchedulerDdpm } from '../core/parity/schedulers.ts';
import { FIXTURES_DIR, hasShared } from './helpers/shared.ts';
import { rng } from './helpers/gradcheck.ts';

const cases: [string, string, ParityRunner][] = [
  ['scheduler-ddim', 'scheduler_ddim', runSchedulerDdim],
  ['scheduler-ddpm', 'scheduler_ddpm', runSchedulerDdpm],
];

describe.skipIf(!hasShared)('scheduler fixtures', () => {
  for (const [name, component, runner] of cases) {
    it(`${name}: every output within its tolerance; tables and timesteps exact`, async () => {
      const c = loadFixture(path.join(FIXTURES_DIR, 'sd1', name));
      expect(c.json.component).toBe(component);
      const actual = await runner(c);
      const reports = compareOutputs(c, actual);
      expect(reports.map((r) => r.name).sort()).toEqual(Object.keys(c.json.outputs).sort());
      for (const r of reports) expect({ name: r.name, pass: r.pass, message: r.message }).toEqual({ name: r.name, pass: true, message: undefined });
      // The float32 tables are diffusers' bits, not merely close.
      for (const table of ['betas', 'alphas_cumprod']) {
        expect(Array.from(actual[table].data as Float32Array)).toEqual(Array.from(c.io!.read(`expected.${table}`) as Float32Array));
      }
    });
  }
});

describe('schedule', () => {
  it('DDIM with 50 steps gives 981, 961, ..., 1 (SD 1.x leading spacing)', () => {
    expect(ddimTimesteps(SD1_SCHEDULER, 50)).toEqual(Array.from({ length: 50 }, (_, i) => 981 - 20 * i));
    expect(ddimTimesteps(SD1_SCHEDULER, 1)).toEqual([1]);
  });

  it('trailing and linspace spacing, numpy rounding (half to even)', () => {
    const with_ = (timestep_spacing: SchedulerConfig['timestep_spacing']) => ({ ...SD1_SCHEDULER, timestep_spacing });
    // round(arange(1000, 0, -333.3)) - 1
    expect(ddimTimesteps(with_('trailing'), 3)).toEqual([999, 666, 332]);
    expect(ddimTimesteps(with_('trailing'), 50)).toEqual(Array.from({ length: 50 }, (_, i) => 999 - 20 * i));
    // linspace(0, 999, 7) = 0, 166.5, 333, 499.5, 666, 832.5, 999
    expect(ddimTimesteps(with_('linspace'), 7)).toEqual([999, 832, 666, 500, 333, 166, 0]);
  });

  it('refuses step counts that leave the schedule', () => {
    expect(() => ddimTimesteps(SD1_SCHEDULER, 0)).toThrow(SchedulerConfigError);
    // 1000 leading steps with steps_offset 1 would reach t = 1000
    expect(() => ddimTimesteps(SD1_SCHEDULER, 1000)).toThrow(/timestep 1000/);
  });

  it('alphas_cumprod is strictly decreasing in (0, 1)', () => {
    const ac = scheduleOf(SD1_SCHEDULER).alphasCumprod;
    expect(ac.length).toBe(1000);
    expect(ac[0]).toBeLessThan(1);
    expect(ac[999]).toBeGreaterThan(0);
    for (let i = 1; i < ac.length; i++) expect(ac[i]).toBeLessThan(ac[i - 1]);
    expect(scheduleOf(SD1_SCHEDULER).finalAlphaCumprod).toBe(ac[0]);
    expect(scheduleOf({ ...SD1_SCHEDULER, set_alpha_to_one: true }).finalAlphaCumprod).toBe(1);
  });

  it('torch float32 linspace ends on its endpoints and is monotone', () => {
    for (const n of [1, 2, 7, 16, 33, 1000]) {
      const v = torchLinspaceF32(0.03, 0.11, n);
      expect(v[0]).toBe(Math.fround(0.03));
      if (n > 1) expect(v[n - 1]).toBe(Math.fround(0.11));
      for (let i = 1; i < n; i++) expect(v[i]).toBeGreaterThan(v[i - 1]);
    }
  });

  it('DDPM: no noise at t = 0, variance clamped at 1e-20 past the end', () => {
    expect(ddpmStepCoefficients(SD1_SCHEDULER, 0, 1000).sigma).toBe(0);
    const last = ddpmStepCoefficients(SD1_SCHEDULER, 1, 50);
    expect(last.alphaProdPrev).toBe(1);
    expect(last.variance).toBe(1e-20);
  });
});

describe('parseSchedulerConfig', () => {
  it('reads a diffusers config, ignoring unknown keys, with SD 1.x defaults', () => {
    expect(parseSchedulerConfig({ _class_name: 'PNDMScheduler', skip_prk_steps: true, clip_sample: false })).toEqual(SD1_SCHEDULER);
    expect(parseSchedulerConfig({ beta_schedule: 'linear', timestep_spacing: 'trailing' })).toMatchObject({ beta_schedule: 'linear', timestep_spacing: 'trailing' });
  });

  it('refuses v_prediction with a typed error naming SD 2.x', () => {
    let err: unknown;
    try {
      parseSchedulerConfig({ ...SD1_SCHEDULER, prediction_type: 'v_prediction' });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(SchedulerConfigError);
    expect(err).toBeInstanceOf(LetheError);
    const e = err as SchedulerConfigError;
    expect(e.code).toBe('scheduler-config');
    expect(e.key).toBe('prediction_type');
    expect(e.message).toMatch(/SD 2\.x v-models .* not support/);
  });

  it('refuses the variants SD 1.x does not use', () => {
    for (const [key, value] of [
      ['clip_sample', true], ['thresholding', true], ['rescale_betas_zero_snr', true], ['trained_betas', [0.1]],
      ['beta_schedule', 'squaredcos_cap_v2'], ['prediction_type', 'sample'], ['variance_type', 'learned_range'], ['beta_start', -1],
    ] as const) {
      expect(() => parseSchedulerConfig({ [key]: value }), key).toThrow(SchedulerConfigError);
    }
  });
});

describe('DDIM step in a graph', () => {
  it('eta 0 with the true eps lands on sqrt(a_prev) x0 + sqrt(1 - a_prev) eps (float32 exact)', async () => {
    const shape = [2, 4, 8, 8];
    const g = new Graph();
    const [x, eps] = [g.input('x', shape), g.input('eps', shape)];
    const c = coefficientInputs(g, STEP_KEYS, 'step');
    const { prev, x0: predX0 } = ddimStep(x, eps, { ...c, sigma: 0 });
    const session = await Session.create(emitOnnx({ prev, x0: predX0 }), { provider: 'cpu', threads: 1 });
    try {
      const rand = rng(7);
      const gauss = () => Math.sqrt(-2 * Math.log(1 - rand())) * Math.cos(2 * Math.PI * rand());
      const x0 = Float32Array.from({ length: x.size }, gauss);
      const e = Float32Array.from({ length: x.size }, gauss);
      const ac = scheduleOf(SD1_SCHEDULER).alphasCumprod;
      for (const t of [981, 501, 21, 1]) {
        const info = ddimStepCoefficients(SD1_SCHEDULER, t, 50, 0);
        expect(info.prevT).toBe(t - 20);
        const [a, ap] = [ac[t], t - 20 >= 0 ? ac[t - 20] : ac[0]];
        const xt = Float32Array.from(x0, (v, i) => Math.sqrt(a) * v + Math.sqrt(1 - a) * e[i]);
        const r = await session.run({ x: xt, eps: e, ...coefficientFeeds(STEP_KEYS, 'step', info) });
        const got = r.prev.data as Float32Array;
        const gotX0 = r.x0.data as Float32Array;
        for (let i = 0; i < x.size; i++) {
          const want = Math.sqrt(ap) * x0[i] + Math.sqrt(1 - ap) * e[i];
          // A few float32 ulps of the terms (x_t itself was rounded to float32 when fed).
          expect(Math.abs(got[i] - want)).toBeLessThanOrEqual(4 * 2 ** -24 * (Math.abs(info.prevFromX * xt[i]) + Math.abs(info.prevFromEps * e[i]) + Math.abs(want)));
          expect(Math.abs(gotX0[i] - x0[i])).toBeLessThanOrEqual(4 * 2 ** -24 * (Math.abs(info.x0FromX * xt[i]) + Math.abs(info.x0FromEps * e[i]) + Math.abs(x0[i])));
        }
      }
    } finally {
      await session.release();
    }
  });

  it('a non-zero sigma without a noise tensor is refused', () => {
    const g = new Graph();
    const [x, eps] = [g.input('x', [1, 4]), g.input('eps', [1, 4])];
    expect(() => ddimStep(x, eps, coefficientInputs(g, STEP_KEYS, 'step'))).toThrow(/noise/);
  });
});
