/**
 * PNG output with the generation parameters in a `parameters` tEXt chunk,
 * in the layout AUTOMATIC1111 writes (so its PNG Info tab and other tools
 * read them back). Files are written to a temporary name, then renamed.
 */
import { randomBytes } from 'node:crypto';
import { renameSync, rmSync, writeFileSync } from 'node:fs';
import { decode, encode } from 'fast-png';

export interface ImageParameters {
  prompt: string;
  negativePrompt?: string;
  steps: number;
  sampler: string;
  guidance: number;
  seed: number;
  width: number;
  height: number;
  model?: string;
  eta?: number;
}

/** "prompt\nNegative prompt: ...\nSteps: 25, Sampler: DDIM, CFG scale: 7.5, Seed: 1, Size: 512x512, Model: x" */
export function formatParameters(p: ImageParameters, version: string): string {
  const fields = [
    `Steps: ${p.steps}`,
    `Sampler: ${p.sampler}`,
    `CFG scale: ${p.guidance}`,
    `Seed: ${p.seed}`,
    `Size: ${p.width}x${p.height}`,
    ...(p.model ? [`Model: ${p.model}`] : []),
    ...(p.eta ? [`Eta: ${p.eta}`] : []),
    `Version: Lethe ${version}`,
  ];
  return [p.prompt, ...(p.negativePrompt ? [`Negative prompt: ${p.negativePrompt}`] : []), fields.join(', ')].join('\n');
}

/** Parses what formatParameters wrote (and A1111's own files) back into fields. */
export function parseParameters(text: string): { prompt: string; negativePrompt: string; fields: Record<string, string> } {
  const lines = text.split('\n');
  const last = lines.pop() ?? '';
  const neg = lines.findIndex((l) => l.startsWith('Negative prompt: '));
  const prompt = (neg >= 0 ? lines.slice(0, neg) : lines).join('\n');
  const negativePrompt = neg >= 0 ? lines.slice(neg).join('\n').slice('Negative prompt: '.length) : '';
  const fields = Object.fromEntries(last.split(', ').map((kv) => [kv.slice(0, kv.indexOf(': ')), kv.slice(kv.indexOf(': ') + 2)]));
  return { prompt, negativePrompt, fields };
}

export function encodePng(rgb: Uint8Array, width: number, height: number, parameters?: string): Uint8Array {
  return encode({ width, height, data: rgb, channels: 3, depth: 8, ...(parameters ? { text: { parameters } } : {}) });
}

export function writePng(path: string, rgb: Uint8Array, width: number, height: number, parameters?: string): void {
  const tmp = `${path}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
  try {
    writeFileSync(tmp, encodePng(rgb, width, height, parameters));
    renameSync(tmp, path);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
}

export function readPngParameters(bytes: Uint8Array): string | undefined {
  return decode(bytes).text?.parameters;
}
