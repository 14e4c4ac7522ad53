/**
 * From an opened checkpoint (either layout) to the parts the pipeline runs:
 * typed configs, key resolvers, the tokenizer and the scheduler.
 */
import { existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { FileFormatError } from '../errors.ts';
import { openModel, type OpenedModel, type OpenModelOptions } from '../io/checkpoint.ts';
import { parseClipTextConfig } from '../nn/clip-text.ts';
import { parseUNetConfig } from '../nn/unet.ts';
import { parseVaeConfig } from '../nn/vae.ts';
import { ClipTokenizer } from '../text/clip-tokenizer.ts';
import type { ModelParts } from './pipeline.ts';
import { parseSchedulerConfig } from './schedule.ts';

/** The model that ships with Lethe (built by `npm run model:mini`), in the diffusers layout. */
export const BUILT_IN_MODEL_DIR = fileURLToPath(new URL('../../models/lethe-mini', import.meta.url));

/** Where Lethe looks for the standard CLIP vocabulary when a checkpoint carries none. */
export function defaultTokenizerDirs(): string[] {
  return [process.env.LETHE_CLIP_TOKENIZER, path.join(os.homedir(), '.cache', 'lethe', 'clip')].filter((d): d is string => Boolean(d));
}

function tokenizerFor(model: OpenedModel, override?: string): ClipTokenizer {
  const dir = override ?? model.tokenizerDir ?? defaultTokenizerDirs().find((d) => existsSync(path.join(d, 'vocab.json')) || existsSync(path.join(d, 'bpe_simple_vocab_16e6.txt.gz')));
  if (!dir) {
    throw new FileFormatError(
      model.path,
      `${model.path} has no tokenizer files (single-file checkpoints do not). Point --tokenizer (or LETHE_CLIP_TOKENIZER) at a folder with the CLIP vocab.json and merges.txt, e.g. the tokenizer/ folder of any SD 1.x diffusers model, or put them in ${path.join(os.homedir(), '.cache', 'lethe', 'clip')}`,
    );
  }
  if (!existsSync(path.join(dir, 'vocab.json')) && existsSync(path.join(dir, 'bpe_simple_vocab_16e6.txt.gz'))) return ClipTokenizer.fromBpeGz(path.join(dir, 'bpe_simple_vocab_16e6.txt.gz'));
  return ClipTokenizer.fromDirectory(dir);
}

export function modelParts(model: OpenedModel, options: { tokenizerDir?: string } = {}): ModelParts {
  return {
    unet: { config: parseUNetConfig(model.unet.config), resolve: model.unet.resolve },
    textEncoder: { config: parseClipTextConfig(model.textEncoder.config), resolve: model.textEncoder.resolve, prefix: 'text_model' },
    vae: { config: parseVaeConfig(model.vae.config), resolve: model.vae.resolve },
    tokenizer: tokenizerFor(model, options.tokenizerDir),
    scheduler: parseSchedulerConfig(model.schedulerConfig),
  };
}

/** Opens a diffusers folder or a single-file checkpoint ready for the pipeline. */
export function loadModel(modelPath: string, options: { tokenizerDir?: string; configs?: OpenModelOptions['configs'] } = {}): { opened: OpenedModel; parts: ModelParts } {
  const opened = openModel(modelPath, { configs: options.configs });
  try {
    return { opened, parts: modelParts(opened, options) };
  } catch (e) {
    opened.close();
    throw e;
  }
}
