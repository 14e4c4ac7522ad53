/**
 * Initial values for a model trained from scratch, following the PyTorch
 * module defaults the checkpoints come from (the layer kind is read off the
 * key name and shape, since parameter names are the checkpoint's names):
 *
 *   Linear / Conv2d weight and bias   U(-1/sqrt(fan_in), 1/sqrt(fan_in))
 *   LayerNorm / GroupNorm             weight 1, bias 0
 *   embeddings (CLIP)                 N(0, 0.02^2); position embeddings N(0, 0.01^2)
 *
 * Every tensor draws from its own generator seeded by (seed, name), so the
 * values do not depend on the order in which a model asks for its weights.
 */
import { TorchCompatibleGenerator } from '../runtime/random.ts';

const NORM_KEY = /(^|\.)(norm\w*|layer_norm\d?|\w*_layernorm|pre_layrnorm|final_layer_norm|ln_\w+)\.(weight|bias)$|(^|\.)norm\d*\.(weight|bias)$/;

export interface InitOptions {
  /** Keys whose weight and bias start at zero (an output layer that should start as the identity of a residual). */
  zero?: (name: string) => boolean;
}

export function torchDefaultInit(seed: number, options: InitOptions = {}): (name: string, shape: readonly number[]) => Float32Array {
  return (name, shape) => {
    const n = shape.reduce((a, b) => a * b, 1);
    if (options.zero?.(name)) return new Float32Array(n);
    if (NORM_KEY.test(name)) return name.endsWith('.weight') ? new Float32Array(n).fill(1) : new Float32Array(n);
    const gen = new TorchCompatibleGenerator(seedFor(seed, name));
    if (/embedding(\.weight)?$/.test(name)) {
      const std = name.includes('position') ? 0.01 : 0.02;
      return scaled(gen.randn(n), std);
    }
    // A bias's fan-in is its layer's: the PyTorch rule uses the weight's, which the bias does not know,
    // so biases start at zero (what diffusers' and transformers' own init functions do).
    if (name.endsWith('.bias') || shape.length === 1) return new Float32Array(n);
    const fanIn = shape.slice(1).reduce((a, b) => a * b, 1);
    const bound = 1 / Math.sqrt(fanIn);
    const u = gen.rand(n);
    for (let i = 0; i < n; i++) u[i] = (u[i] * 2 - 1) * bound;
    return u;
  };
}

function scaled(x: Float32Array, k: number): Float32Array {
  for (let i = 0; i < x.length; i++) x[i] *= k;
  return x;
}

/** FNV-1a of the name mixed with the seed: a stable 32-bit generator seed per tensor. */
function seedFor(seed: number, name: string): number {
  let h = 0x811c9dc5 ^ seed;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193);
  return h >>> 0;
}
