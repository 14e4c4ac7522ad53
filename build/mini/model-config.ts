/**
 * lethe-mini's architecture: Stable Diffusion 1.x's classes at emoji size.
 * Each object is the `config.json` written into the model folder, so the
 * same parsers that read an SD 1.x checkpoint build the training graphs.
 */
import { SD1_SCHEDULER } from '../../core/diffusion/schedule.ts';

/** BPE vocabulary size (specials included); the caption corpus has about 2,600 distinct words. */
export const VOCAB_SIZE = 4096;
/** The text tower's positions: SD's 77, so prompts are encoded exactly as for SD 1.x. */
export const MAX_POSITIONS = 77;

export function textEncoderConfig(vocabSize: number) {
  return {
    _name_or_path: 'lethe-mini',
    architectures: ['CLIPTextModelWithProjection'],
    model_type: 'clip_text_model',
    vocab_size: vocabSize,
    hidden_size: 128,
    intermediate_size: 512,
    projection_dim: 128,
    num_hidden_layers: 4,
    num_attention_heads: 4,
    max_position_embeddings: MAX_POSITIONS,
    hidden_act: 'quick_gelu',
    layer_norm_eps: 1e-5,
    bos_token_id: vocabSize - 2,
    eos_token_id: vocabSize - 1,
    pad_token_id: vocabSize - 1,
    torch_dtype: 'float16',
  };
}

export const IMAGE_ENCODER_CONFIG = {
  _name_or_path: 'lethe-mini',
  architectures: ['CLIPVisionModelWithProjection'],
  model_type: 'clip_vision_model',
  hidden_size: 128,
  intermediate_size: 512,
  projection_dim: 128,
  num_hidden_layers: 4,
  num_attention_heads: 4,
  num_channels: 3,
  image_size: 32,
  patch_size: 8,
  hidden_act: 'quick_gelu',
  layer_norm_eps: 1e-5,
  torch_dtype: 'float16',
};

/** 32x32x3 <-> 8x8x4: three levels (two downsamplings). scaling_factor is measured after training. */
export const VAE_CONFIG = {
  _class_name: 'AutoencoderKL',
  in_channels: 3,
  out_channels: 3,
  down_block_types: ['DownEncoderBlock2D', 'DownEncoderBlock2D', 'DownEncoderBlock2D'],
  up_block_types: ['UpDecoderBlock2D', 'UpDecoderBlock2D', 'UpDecoderBlock2D'],
  block_out_channels: [32, 64, 64],
  layers_per_block: 1,
  act_fn: 'silu',
  latent_channels: 4,
  norm_num_groups: 16,
  sample_size: 32,
  scaling_factor: 1,
};

export const UNET_CONFIG = {
  _class_name: 'UNet2DConditionModel',
  sample_size: 8,
  in_channels: 4,
  out_channels: 4,
  flip_sin_to_cos: true,
  freq_shift: 0,
  down_block_types: ['CrossAttnDownBlock2D', 'CrossAttnDownBlock2D', 'DownBlock2D'],
  mid_block_type: 'UNetMidBlock2DCrossAttn',
  up_block_types: ['UpBlock2D', 'CrossAttnUpBlock2D', 'CrossAttnUpBlock2D'],
  block_out_channels: [64, 128, 128],
  layers_per_block: 1,
  norm_num_groups: 32,
  norm_eps: 1e-5,
  cross_attention_dim: 128,
  attention_head_dim: 4,
};

/** SD 1.x's scaled-linear schedule, as its DDIM scheduler_config.json writes it. */
export const SCHEDULER_CONFIG = {
  _class_name: 'DDIMScheduler',
  ...SD1_SCHEDULER,
};
