/** Runs any case directory of the sd1-fixture/1 format with the runner for its component. */
import { FileFormatError } from '../errors.ts';
import { runClipText } from './clip-text.ts';
import { compareOutputs, loadFixture, type OutputReport, type ParityRunner } from './fixture.ts';
import { runPipeline } from './pipeline.ts';
import { runSchedulerDdim, runSchedulerDdpm } from './schedulers.ts';
import { runTokenizerCase } from './tokenizer.ts';
import { runUNetForward, runUNetGrad } from './unet.ts';
import { runVaeDecode, runVaeEncode } from './vae.ts';

export const RUNNERS: Readonly<Record<string, ParityRunner>> = {
  unet: runUNetForward,
  unet_grad: runUNetGrad,
  clip_text: runClipText,
  vae_decode: runVaeDecode,
  vae_encode: runVaeEncode,
  scheduler_ddim: runSchedulerDdim,
  scheduler_ddpm: runSchedulerDdpm,
  pipeline: runPipeline,
};

export interface ParityResult {
  name: string;
  component: string;
  pass: boolean;
  seconds: number;
  outputs: OutputReport[];
}

export async function runParity(dir: string): Promise<ParityResult> {
  const c = loadFixture(dir);
  const t0 = performance.now();
  let outputs: OutputReport[];
  if (c.json.component === 'tokenizer') {
    outputs = runTokenizerCase(c);
  } else {
    const runner = RUNNERS[c.json.component];
    if (!runner) throw new FileFormatError(dir, `component '${c.json.component}' has no runner; known: tokenizer, ${Object.keys(RUNNERS).join(', ')}`);
    outputs = compareOutputs(c, await runner(c));
  }
  return { name: c.json.name, component: c.json.component, pass: outputs.every((o) => o.pass), seconds: (performance.now() - t0) / 1000, outputs };
}
