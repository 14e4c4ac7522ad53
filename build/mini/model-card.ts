/** MODEL_CARD.md of lethe-mini, written from the configs, the build records and the measured evaluation. */
import { readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { FileFormatError } from '../../core/errors.ts';
import type { Evaluation } from './evaluate.ts';
import { REPO_ROOT } from './sources.ts';

export interface CardInput {
  configs: { text: Record<string, unknown>; vision: Record<string, unknown>; vae: Record<string, unknown>; unet: Record<string, unknown> };
  parameters: Record<'text_encoder' | 'image_encoder' | 'vae' | 'unet', number>;
  folderBytes: number;
  stages: Record<string, { ms: number; steps?: number; finalLoss?: number; [k: string]: unknown }>;
  schedule: Record<string, Record<string, number>>;
  seed: number;
  dataset: { images: number; concepts: number; categories: number; skinToneImages: number };
  evaluation: Evaluation;
  gridPath: string;
}

const pct = (x: number): string => `${(100 * x).toFixed(1)} %`;
const min = (ms: number): string => `${(ms / 60000).toFixed(1)} min`;

export function modelCard(c: CardInput): string {
  const e = c.evaluation;
  const total = Object.values(c.stages).reduce((a, s) => a + s.ms, 0);
  const row = (name: string, cls: string, cfg: string, n: number): string => `| ${name} | ${cls} | ${cfg} | ${(n / 1e6).toFixed(2)} M |`;
  const v = c.configs;
  return `# lethe-mini

A miniature Stable Diffusion 1.x trained by Lethe's own trainer core on emoji artwork: the model that
ships with Lethe so that the studio, every erasure method and every metric run on a CPU out of the box.
It uses SD 1.x's classes, file layout and loader (CLIP BPE tokenizer, CLIPTextModel, UNet2DConditionModel,
AutoencoderKL, DDIM with SD's scaled-linear schedule) at 32x32 pixels, and ships its CLIP image tower as
\`image_encoder/\`: the evaluator behind CLIP scores and zero-shot classification.

It is a test and demonstration model: it draws the ${c.dataset.concepts} emoji concepts it was trained on, at
32x32, and nothing else. It was built with \`npm run model:mini\` (seed ${c.seed}); the same command rebuilds it.

## Architecture

| folder | class | shape | parameters |
|---|---|---|---|
${row('text_encoder/', 'CLIPTextModelWithProjection', `${v.text.num_hidden_layers} layers, width ${v.text.hidden_size}, ${v.text.num_attention_heads} heads, ${v.text.max_position_embeddings} positions, vocab ${v.text.vocab_size}`, c.parameters.text_encoder)}
${row('image_encoder/', 'CLIPVisionModelWithProjection', `ViT, ${v.vision.image_size} px, patch ${v.vision.patch_size}, ${v.vision.num_hidden_layers} layers, width ${v.vision.hidden_size}`, c.parameters.image_encoder)}
${row('vae/', 'AutoencoderKL', `channels ${JSON.stringify(v.vae.block_out_channels)}, 32x32x3 <-> 8x8x4, scaling_factor ${(c.stages.vae?.scalingFactor as number)?.toFixed(5)}`, c.parameters.vae)}
${row('unet/', 'UNet2DConditionModel', `channels ${JSON.stringify(v.unet.block_out_channels)}, ${JSON.stringify(v.unet.down_block_types)}, cross-attention dim ${v.unet.cross_attention_dim}`, c.parameters.unet)}

Weights are float16 safetensors, ${(c.folderBytes / 1e6).toFixed(1)} MB for the whole folder. The text tower conditions the
UNet exactly as CLIP conditions SD 1.x (the last hidden state of all 77 positions); it also carries
\`text_projection\`, which the UNet does not use and the evaluator does. The VAE's scaling factor was
measured after training as 1 / std of sampled latents over the whole dataset.

## Data

${c.dataset.images} images of ${c.dataset.concepts} emoji concepts in ${c.dataset.categories} categories (${c.dataset.skinToneImages} of the
images are skin-tone variants, captioned as such): the 64 px renderings of Noto Emoji
(\`emoji-datasource-google\`) and Twemoji (\`emoji-datasource-twitter\`), composited on white and downscaled to
32x32. Captions come from the emoji names and short names with three templates ("an emoji of a …", "…",
"a … icon"). \`LICENSES.md\` in this folder has the full provenance.

**Licences.** The weights are derived from the artwork, so they carry its terms:
- Noto Emoji images: Apache License 2.0 (full text in \`LICENSE-Apache-2.0.txt\`).
- Twemoji graphics: CC-BY 4.0. Attribution, required wherever this model is distributed:
  Twemoji graphics: Copyright 2019 Twitter, Inc and other contributors; Copyright 2022-present Jason Sofonia &
  Justine De Caires and other contributors. Licensed under CC-BY 4.0:
  https://creativecommons.org/licenses/by/4.0/. The images were modified (composited, downscaled).
- Names and categories: emoji-data, MIT.

## Training

All on ${os.cpus().length} CPU cores (${os.cpus()[0]?.model.trim() ?? 'unknown CPU'}), onnxruntime CPU provider, AdamW, warm-up then cosine decay.

| stage | what | steps x batch | learning rate | final loss | wall time |
|---|---|---|---|---|---|
| tokenizer | CLIP-format BPE on the captions | - | - | - | ${min(c.stages.tokenizer?.ms ?? 0)} |
| clip | contrastive (CLIP loss), one image of each of 256 distinct concepts per batch | ${c.stages.clip?.steps} x ${c.schedule.clip.batch} | ${c.schedule.clip.lr} | ${c.stages.clip?.finalLoss?.toFixed(4)} | ${min(c.stages.clip?.ms ?? 0)} |
| vae | L1 + ${c.schedule.vae.klWeight} KL | ${c.stages.vae?.steps} x ${c.schedule.vae.batch} | ${c.schedule.vae.lr} | ${c.stages.vae?.finalLoss?.toFixed(4)} | ${min(c.stages.vae?.ms ?? 0)} |
| unet | epsilon MSE, text tower frozen, ${pct(c.schedule.unet.emptyCaptionRate)} empty captions | ${c.stages.unet?.steps} x ${c.schedule.unet.batch} | ${c.schedule.unet.lr} | ${c.stages.unet?.finalLoss?.toFixed(4)} | ${min(c.stages.unet?.ms ?? 0)} |
| **total** | | | | | **${min(total)}** |

## Measured quality

- **mini-CLIP zero-shot** on its ${e.zeroShot.images} training images against all ${e.zeroShot.concepts} concept names
  ("an emoji of a …"): top-1 **${pct(e.zeroShot.top1)}**. Per category: ${Object.entries(e.zeroShot.perCategory).map(([k, x]) => `${k} ${pct(x)}`).join(', ')}.
- **Generated images**: a fixed panel of ${e.panel.concepts} concepts (up to 6 per category, evenly spaced through
  each category's list), seeds ${e.panel.seeds.join(', ')}, ${e.panel.steps} DDIM steps, guidance ${e.panel.guidance}: mini-CLIP zero-shot among the
  panel's names recovers the prompted concept in **${pct(e.panel.rate)}** of the ${e.panel.images} images. The grid is
  \`${c.gridPath}\` (one row per category; each group of four is one concept's seeds; the list is below).
- **Speed**: ${e.speed.images} images, ${e.speed.steps} steps: **${e.speed.seconds.toFixed(2)} s** on this machine after a
  ${e.speed.compileSeconds.toFixed(1)} s one-time compilation.

| category | concept | seen as (seeds ${e.panel.seeds.join(', ')}) |
|---|---|---|
${e.panel.entries.map((p) => `| ${p.category} | ${p.name} | ${p.recognisedAs.map((n) => (n === p.name ? 'yes' : n)).join('; ')} |`).join('\n')}

## Limitations

32x32 pixels; only the training concepts; the evaluator is trained on the same images it is asked to
judge, so its scores measure agreement with the training data, not open-world recognition.
`;
}

/** The Apache License 2.0 text (terms and conditions), from a copy shipped in node_modules. */
export function apacheLicenseText(): string {
  const file = path.join(REPO_ROOT, 'node_modules', 'playwright-core', 'LICENSE');
  const text = readFileSync(file, 'utf8');
  const end = text.indexOf('END OF TERMS AND CONDITIONS');
  if (!text.includes('Apache License') || end < 0) throw new FileFormatError(file, `${file} is not the Apache License 2.0 text expected there; reinstall with npm install`);
  return `${text.slice(0, end + 'END OF TERMS AND CONDITIONS'.length).trimEnd()}\n`;
}
