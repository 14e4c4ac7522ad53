/**
 * Optimizers as graph code appended to a training graph, so one onnxruntime
 * run computes the loss, the gradients, clips them and updates the weights.
 * Per-step scalars (learning rate, bias corrections) are graph inputs, so a
 * schedule never needs a recompile.
 */
import * as F from '../graph/functional.ts';
import type { Graph, Tensor } from '../graph/graph.ts';

export interface AdamWConfig {
  kind: 'adamw';
  lr: number;
  betas?: [number, number];
  eps?: number;
  weightDecay?: number;
  /** Clip the global gradient norm to this value. */
  maxGradNorm?: number;
}

export interface SgdConfig {
  kind: 'sgd';
  lr: number;
  momentum?: number;
  weightDecay?: number;
  maxGradNorm?: number;
}

export type OptimizerConfig = AdamWConfig | SgdConfig;

/** Names of the optimizer-state tensors kept per parameter. */
export function stateSlots(cfg: OptimizerConfig): string[] {
  return cfg.kind === 'adamw' ? ['exp_avg', 'exp_avg_sq'] : (cfg.momentum ?? 0) > 0 ? ['momentum'] : [];
}

/** Scalar inputs fed each step. */
export const STEP_INPUTS = { lr: 'optim.lr', bias1: 'optim.bias_correction1', bias2: 'optim.bias_correction2' } as const;

export interface UpdateGraph {
  /** Output name -> tensor: `new.<param>`, `new.<slot>.<param>`, `optim.grad_norm`, `optim.finite`. */
  outputs: Record<string, Tensor>;
  /** Input name of each state slot of each parameter. */
  stateInputs: Map<string, Tensor>;
}

/**
 * Appends clipping and the update rule. `params` and `grads` are aligned;
 * the caller feeds the state tensors and the STEP_INPUTS scalars.
 */
export function buildUpdate(graph: Graph, cfg: OptimizerConfig, params: Record<string, Tensor>, grads: Record<string, Tensor>, loss: Tensor): UpdateGraph {
  const names = Object.keys(params);
  const lr = graph.input(STEP_INPUTS.lr, []);

  // Global gradient norm: clipping and the finiteness check both use it.
  const sq = names.map((n) => F.sumAll(F.square(grads[n])));
  const norm = F.sqrt(sq.reduce((a, b) => F.add(a, b)));
  const finite = F.mul(F.cast(F.isFinite(norm), 'float32'), F.cast(F.isFinite(loss), 'float32'));
  let coef: Tensor | null = null;
  if (cfg.maxGradNorm !== undefined) coef = F.where(F.greater(norm, cfg.maxGradNorm), F.div(cfg.maxGradNorm, F.add(norm, 1e-6)), 1);

  const outputs: Record<string, Tensor> = { 'optim.grad_norm': norm, 'optim.finite': finite };
  const stateInputs = new Map<string, Tensor>();
  const state = (slot: string, n: string): Tensor => {
    const t = graph.input(`${slot}.${n}`, params[n].shape);
    stateInputs.set(`${slot}.${n}`, t);
    return t;
  };

  if (cfg.kind === 'adamw') {
    const [b1, b2] = cfg.betas ?? [0.9, 0.999];
    const eps = cfg.eps ?? 1e-8;
    const wd = cfg.weightDecay ?? 0.01;
    const bias1 = graph.input(STEP_INPUTS.bias1, []);
    const bias2 = graph.input(STEP_INPUTS.bias2, []);
    for (const n of names) {
      const p = params[n];
      const g = coef ? F.mul(grads[n], coef) : grads[n];
      const m = F.add(F.mul(state('exp_avg', n), b1), F.mul(g, 1 - b1));
      const v = F.add(F.mul(state('exp_avg_sq', n), b2), F.mul(F.square(g), 1 - b2));
      // PyTorch AdamW: decoupled decay, then p -= lr * m_hat / (sqrt(v_hat) + eps).
      const decayed = wd ? F.mul(p, F.sub(1, F.mul(lr, wd))) : p;
      const step = F.div(F.mul(m, bias1), F.add(F.sqrt(F.mul(v, bias2)), eps));
      outputs[`new.${n}`] = F.sub(decayed, F.mul(step, lr));
      outputs[`new.exp_avg.${n}`] = m;
      outputs[`new.exp_avg_sq.${n}`] = v;
    }
  } else {
    const mu = cfg.momentum ?? 0;
    const wd = cfg.weightDecay ?? 0;
    for (const n of names) {
      const p = params[n];
      let d = coef ? F.mul(grads[n], coef) : grads[n];
      if (wd) d = F.add(d, F.mul(p, wd)); // PyTorch SGD: L2 decay folded into the gradient
      if (mu > 0) {
        d = F.add(F.mul(state('momentum', n), mu), d);
        outputs[`new.momentum.${n}`] = d;
      }
      outputs[`new.${n}`] = F.sub(p, F.mul(d, lr));
    }
  }
  return { outputs, stateInputs };
}

/** Host-side per-step scalars (PyTorch's bias corrections for step t >= 1). */
export function stepScalars(cfg: OptimizerConfig, step: number, lr = cfg.lr): Record<string, Float32Array> {
  const out: Record<string, Float32Array> = { [STEP_INPUTS.lr]: new Float32Array([lr]) };
  if (cfg.kind === 'adamw') {
    const [b1, b2] = cfg.betas ?? [0.9, 0.999];
    out[STEP_INPUTS.bias1] = new Float32Array([1 / (1 - b1 ** step)]);
    out[STEP_INPUTS.bias2] = new Float32Array([1 / (1 - b2 ** step)]);
  }
  return out;
}
