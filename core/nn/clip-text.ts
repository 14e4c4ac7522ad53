/**
 * CLIPTextModel (transformers), the SD 1.x text encoder, on the graph API.
 * Scope paths are the checkpoint keys under `text_model.`:
 *
 *   embeddings.{token_embedding, position_embedding}
 *   encoder.layers.{i}.{layer_norm1, self_attn.{q,k,v,out}_proj, layer_norm2, mlp.{fc1, fc2}}
 *   final_layer_norm
 *
 * The caller picks the scope, so checkpoints that omit the `text_model.`
 * level (some single-file ones) need only a different prefix.
 */
import { FileFormatError, GraphBuildError } from '../errors.ts';
import * as F from '../graph/functional.ts';
import type { Tensor } from '../graph/graph.ts';
import * as L from './layers.ts';
import type { Scope } from './params.ts';

/** transformers' CLIPTextConfig keys that the text tower uses. */
export interface ClipTextConfig {
  vocab_size: number;
  hidden_size: number;
  intermediate_size: number;
  num_hidden_layers: number;
  num_attention_heads: number;
  max_position_embeddings: number;
  hidden_act: 'quick_gelu' | 'gelu';
  layer_norm_eps: number;
  bos_token_id: number;
  /** 2 is the legacy SD 1.x value: the pooled position is then argmax(input_ids). */
  eos_token_id: number;
  pad_token_id: number;
}

/** openai/clip-vit-large-patch14's text tower, as SD 1.x ships it. */
export const SD1_CLIP_TEXT_CONFIG: Readonly<ClipTextConfig> = {
  vocab_size: 49408,
  hidden_size: 768,
  intermediate_size: 3072,
  num_hidden_layers: 12,
  num_attention_heads: 12,
  max_position_embeddings: 77,
  hidden_act: 'quick_gelu',
  layer_norm_eps: 1e-5,
  bos_token_id: 0,
  eos_token_id: 2,
  pad_token_id: 1,
};

const ACTIVATIONS = { quick_gelu: F.quickGelu, gelu: F.gelu } as const;

/**
 * A config.json object (CLIPTextConfig.to_dict()) over the SD 1.x defaults.
 * Unknown keys are ignored; every bad value is reported at once.
 */
export function parseClipTextConfig(json: unknown, source = 'config.json'): ClipTextConfig {
  return readClipConfig(json, SD1_CLIP_TEXT_CONFIG, source, 'text encoder', () => []);
}

/**
 * The fields of a transformers CLIP config (text or vision) over `defaults`:
 * `hidden_act` one of the supported activations, `layer_norm_eps` positive,
 * `*_token_id` non-negative integers, every other field a positive integer;
 * then the tower's own checks. All problems are reported in one error.
 */
export function readClipConfig<T extends ClipEncoderConfig>(json: unknown, defaults: Readonly<T>, source: string, what: string, check: (cfg: T) => string[]): T {
  if (typeof json !== 'object' || json === null || Array.isArray(json)) throw new FileFormatError(source, `${source}: a ${what} config must be a JSON object`);
  const raw = json as Record<string, unknown>;
  const cfg = { ...defaults };
  const fields = cfg as Record<string, unknown>;
  const problems: string[] = [];
  for (const key of Object.keys(cfg)) {
    const v = raw[key] ?? fields[key];
    if (key === 'hidden_act') {
      if (typeof v === 'string' && v in ACTIVATIONS) fields[key] = v;
      else problems.push(`hidden_act ${JSON.stringify(v)} (supported: ${Object.keys(ACTIVATIONS).join(', ')})`);
    } else if (key === 'layer_norm_eps') {
      if (typeof v === 'number' && v > 0) fields[key] = v;
      else problems.push(`layer_norm_eps ${JSON.stringify(v)} (a positive number)`);
    } else if (key.endsWith('_token_id')) {
      if (Number.isSafeInteger(v) && (v as number) >= 0) fields[key] = v;
      else problems.push(`${key} ${JSON.stringify(v)} (a non-negative integer)`);
    } else if (Number.isSafeInteger(v) && (v as number) > 0) {
      fields[key] = v;
    } else {
      problems.push(`${key} ${JSON.stringify(v)} (a positive integer)`);
    }
  }
  if (problems.length === 0 && cfg.hidden_size % cfg.num_attention_heads !== 0) {
    problems.push(`hidden_size ${cfg.hidden_size} is not divisible by num_attention_heads ${cfg.num_attention_heads}`);
  }
  if (problems.length === 0) problems.push(...check(cfg));
  if (problems.length) throw new FileFormatError(source, `${source}: invalid CLIP ${what} config: ${problems.join('; ')}`);
  return cfg;
}

export interface ClipTextOptions {
  /** Also return the embeddings and every layer's output (transformers' hidden_states). */
  outputHiddenStates?: boolean;
  /**
   * 1 (default): the whole stack. k: `final_layer_norm` of the output of
   * layer N - k + 1, so 2 = the penultimate layer (the A1111 convention;
   * diffusers' `clip_skip` counts one less).
   */
  clipSkip?: number;
}

export interface ClipTextOutputs {
  /** [B, L, D]: `final_layer_norm` of the last layer (or of the clip-skip layer): what SD feeds the UNet. */
  lastHiddenState: Tensor;
  /** [B, D]: transformers' pooler_output, always from the whole stack. */
  pooled: Tensor;
  /** When asked: [embeddings, layer 1 output, ..., layer N output], before final_layer_norm. */
  hiddenStates?: Tensor[];
}

/** CLIPTextTransformer over int64 token ids [B, L]; `scope` is the `text_model` level. */
export function clipTextEncoder(scope: Scope, cfg: ClipTextConfig, inputIds: Tensor, options: ClipTextOptions = {}): ClipTextOutputs {
  const n = cfg.num_hidden_layers;
  const clipSkip = options.clipSkip ?? 1;
  if (inputIds.rank !== 2 || (inputIds.dtype !== 'int64' && inputIds.dtype !== 'int32')) {
    throw new GraphBuildError(`clipTextEncoder: input ids must be int64 [batch, length], got ${inputIds.dtype}[${inputIds.shape.join(',')}]`);
  }
  if (inputIds.shape[1] > cfg.max_position_embeddings) {
    throw new GraphBuildError(`clipTextEncoder: ${inputIds.shape[1]} tokens, but the model has ${cfg.max_position_embeddings} positions`);
  }
  if (!Number.isInteger(clipSkip) || clipSkip < 1 || clipSkip > n) throw new GraphBuildError(`clipTextEncoder: clipSkip must be an integer in [1, ${n}], got ${clipSkip}`);
  const finalLayerNorm = (x: Tensor): Tensor => L.layerNorm(scope.scope('final_layer_norm'), x, cfg.layer_norm_eps);

  // 1. embeddings
  let h = embeddings(scope.scope('embeddings'), cfg, inputIds);
  const hiddenStates = [h];

  // 2. encoder
  const layers = scope.scope('encoder').scope('layers');
  for (let i = 0; i < n; i++) {
    h = clipEncoderLayer(layers.scope(i), cfg, h, true);
    hiddenStates.push(h);
  }

  // 3. final layer norm
  h = finalLayerNorm(h);

  // 4. pooled output
  const pooled = selectPosition(h, pooledPosition(inputIds, cfg.eos_token_id));

  return {
    lastHiddenState: clipSkip === 1 ? h : finalLayerNorm(hiddenStates[n - clipSkip + 1]),
    pooled,
    ...(options.outputHiddenStates ? { hiddenStates } : {}),
  };
}

/** token_embedding(ids) + position_embedding(0..L-1). */
function embeddings(s: Scope, cfg: ClipTextConfig, ids: Tensor): Tensor {
  const length = ids.shape[1];
  const tokens = F.gather(s.scope('token_embedding').get('weight', [cfg.vocab_size, cfg.hidden_size]), ids, 0);
  const positions = s.scope('position_embedding').get('weight', [cfg.max_position_embeddings, cfg.hidden_size]);
  return F.add(tokens, F.slice(positions, [0], [0], [length]));
}

/** The CLIPEncoderLayer settings the text and vision towers share. */
export type ClipEncoderConfig = Pick<ClipTextConfig, 'hidden_size' | 'intermediate_size' | 'num_attention_heads' | 'hidden_act' | 'layer_norm_eps'>;

/** CLIPEncoderLayer: pre-LN attention (causal in the text tower) and MLP, each with a residual. */
export function clipEncoderLayer(s: Scope, cfg: ClipEncoderConfig, x: Tensor, causal: boolean): Tensor {
  let h = F.add(x, selfAttention(s.scope('self_attn'), cfg, L.layerNorm(s.scope('layer_norm1'), x, cfg.layer_norm_eps), causal));
  h = F.add(h, mlp(s.scope('mlp'), cfg, L.layerNorm(s.scope('layer_norm2'), h, cfg.layer_norm_eps)));
  return h;
}

/** CLIPAttention: multi-head, scale head_dim^-0.5. */
function selfAttention(s: Scope, cfg: ClipEncoderConfig, x: Tensor, causal: boolean): Tensor {
  const [b, l, d] = x.shape;
  const heads = cfg.num_attention_heads;
  const toHeads = (t: Tensor): Tensor => F.transpose(F.reshape(t, [b, l, heads, d / heads]), [0, 2, 1, 3]);
  const q = toHeads(L.linear(s.scope('q_proj'), x, d, d));
  const k = toHeads(L.linear(s.scope('k_proj'), x, d, d));
  const v = toHeads(L.linear(s.scope('v_proj'), x, d, d));
  const o = F.reshape(F.transpose(F.sdpa(q, k, v, { causal }), [0, 2, 1, 3]), [b, l, d]);
  return L.linear(s.scope('out_proj'), o, d, d);
}

function mlp(s: Scope, cfg: ClipEncoderConfig, x: Tensor): Tensor {
  const h = ACTIVATIONS[cfg.hidden_act](L.linear(s.scope('fc1'), x, cfg.hidden_size, cfg.intermediate_size));
  return L.linear(s.scope('fc2'), h, cfg.intermediate_size, cfg.hidden_size);
}

/**
 * One-hot [B, L] of the pooled position, transformers' rule: with the
 * legacy eos_token_id 2, the first argmax of the ids (the end-of-text token
 * has the largest id); otherwise the first position holding eos_token_id
 * (position 0 when there is none, as argmax of an all-zero mask gives).
 * Built from comparisons, since the op table has no ArgMax; ids are compared
 * as float32, exact below 2^24.
 */
function pooledPosition(ids: Tensor, eosTokenId: number): Tensor {
  const x = F.cast(ids, 'float32');
  return firstArgmax(eosTokenId === 2 ? x : F.cast(F.equal(x, eosTokenId), 'float32'));
}

/** One-hot of the first maximum along the last axis of [B, L]. */
function firstArgmax(v: Tensor): Tensor {
  const l = v.shape[1];
  const earliness = v.graph.constant(Float32Array.from({ length: l }, (_, i) => l - i), [l]);
  const score = F.where(F.equal(v, F.reduceMax(v, [1], true)), earliness, 0);
  return F.cast(F.equal(score, F.reduceMax(score, [1], true)), 'float32');
}

/** h[b, position[b]] for a one-hot [B, L] position: [B, D]. */
function selectPosition(h: Tensor, oneHot: Tensor): Tensor {
  const [b, l, d] = h.shape;
  return F.reshape(F.matmul(F.reshape(oneHot, [b, 1, l]), h), [b, d]);
}
