/**
 * One training stage of lethe-mini, resumable: the trainer's state (weights,
 * optimizer moments, step) is written atomically every `checkpointEvery`
 * steps and at the end; a rerun with the same fingerprint continues from it.
 * Batches are functions of the step number, so a resumed run sees the same
 * data as an uninterrupted one.
 */
import { existsSync, rmSync } from 'node:fs';
import { LetheError } from '../../core/errors.ts';
import { openSafetensors, writeSafetensors, type TensorToWrite } from '../../core/io/safetensors.ts';
import type { Feeds } from '../../core/runtime/session.ts';
import type { Trainer, TrainerState } from '../../core/runtime/trainer.ts';

export interface StageRun {
  name: string;
  trainer: Trainer;
  steps: number;
  /** Learning rate of step s (1-based). */
  lr: (step: number) => number;
  batch: (step: number) => Feeds;
  checkpoint: string;
  checkpointEvery: number;
  /** Hash of everything that shapes the run (configs, data, seed); a checkpoint with another one is not resumed. */
  fingerprint: string;
  onProgress?: (p: StageProgress) => void;
  /** When set, a checkpoint written with other settings is reported here and deleted instead of refused. */
  discardStale?: (file: string) => void;
}

export interface StageProgress {
  stage: string;
  step: number;
  total: number;
  loss: number;
  /** Mean loss over the last 50 steps. */
  smoothLoss: number;
  elapsedMs: number;
  etaMs: number;
}

export interface StageResult {
  params: Record<string, Float32Array>;
  /** Wall time of the stage over all its sessions (resumed runs add up). */
  trainMs: number;
  resumedFrom: number;
  finalLoss: number;
}

export class StageMismatchError extends LetheError {
  constructor(file: string, found: string, want: string) {
    super('stage-mismatch', `${file} was written by a run with other settings (fingerprint ${found}, this run ${want}); delete it (or pass --fresh) to start the stage over`);
  }
}

export async function runStage(run: StageRun): Promise<StageResult> {
  const { trainer } = run;
  let priorMs = 0;
  let resumedFrom = 0;
  if (existsSync(run.checkpoint) && run.discardStale && checkpointFingerprint(run.checkpoint) !== run.fingerprint) {
    run.discardStale(run.checkpoint);
    rmSync(run.checkpoint);
  }
  if (existsSync(run.checkpoint)) {
    const saved = readTrainerState(run.checkpoint, run.fingerprint);
    trainer.loadState(saved.state);
    priorMs = saved.trainMs;
    resumedFrom = saved.state.step;
  }
  const t0 = performance.now();
  const recent: number[] = [];
  let loss = NaN;
  for (let s = trainer.step + 1; s <= run.steps; s++) {
    const r = await trainer.run(run.batch(s), run.lr(s));
    loss = r.loss;
    recent.push(loss);
    if (recent.length > 50) recent.shift();
    const elapsedMs = priorMs + performance.now() - t0;
    const done = s - resumedFrom;
    run.onProgress?.({
      stage: run.name,
      step: s,
      total: run.steps,
      loss,
      smoothLoss: recent.reduce((a, b) => a + b, 0) / recent.length,
      elapsedMs,
      etaMs: ((performance.now() - t0) / done) * (run.steps - s),
    });
    if (s % run.checkpointEvery === 0 || s === run.steps) writeTrainerState(run.checkpoint, trainer.saveState(), run.fingerprint, elapsedMs);
  }
  const trainMs = priorMs + performance.now() - t0;
  const state = trainer.saveState();
  return { params: state.params, trainMs, resumedFrom, finalLoss: loss };
}

/** Trainer state as safetensors: `param/<key>`, `slot/<slot>.<key>`, the step and fingerprint in the metadata. */
export function writeTrainerState(file: string, state: TrainerState, fingerprint: string, trainMs: number): void {
  const tensors: [string, TensorToWrite][] = [];
  for (const [k, v] of Object.entries(state.params)) tensors.push([`param/${k}`, { dtype: 'F32', shape: [v.length], data: v }]);
  for (const [k, v] of Object.entries(state.slots)) tensors.push([`slot/${k}`, { dtype: 'F32', shape: [v.length], data: v }]);
  writeSafetensors(file, tensors, { step: String(state.step), fingerprint, train_ms: String(Math.round(trainMs)) });
}

/** The fingerprint a checkpoint was written with ('' when unreadable). */
export function checkpointFingerprint(file: string): string {
  try {
    const f = openSafetensors(file);
    const fp = f.metadata.fingerprint ?? '';
    f.close();
    return fp;
  } catch {
    return '';
  }
}

export function readTrainerState(file: string, fingerprint: string): { state: TrainerState; trainMs: number } {
  const f = openSafetensors(file);
  try {
    const meta = f.metadata ?? {};
    if (meta.fingerprint !== fingerprint) throw new StageMismatchError(file, meta.fingerprint ?? 'none', fingerprint);
    const state: TrainerState = { step: Number(meta.step), params: {}, slots: {} };
    for (const name of f.tensors.keys()) {
      const v = f.readAsFloat32(name);
      if (name.startsWith('param/')) state.params[name.slice(6)] = v;
      else if (name.startsWith('slot/')) state.slots[name.slice(5)] = v;
    }
    return { state, trainMs: Number(meta.train_ms ?? 0) };
  } finally {
    f.close();
  }
}

/** Linear warm-up, then cosine decay to `floor` x the peak. */
export function warmupCosine(peak: number, warmup: number, total: number, floor = 0.05): (step: number) => number {
  return (s) => {
    if (s <= warmup) return (peak * s) / warmup;
    const p = Math.min(1, (s - warmup) / Math.max(1, total - warmup));
    return peak * (floor + (1 - floor) * 0.5 * (1 + Math.cos(Math.PI * p)));
  };
}
