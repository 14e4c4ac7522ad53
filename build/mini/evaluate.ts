/**
 * lethe-mini's quality, measured with its own mini-CLIP:
 *
 *   zero-shot   every training image against the names of all concepts
 *               ("an emoji of a …"): top-1 accuracy, overall and per category.
 *   panel       a fixed panel of concepts spread over the categories (the
 *               same number from each, evenly spaced through its list, so no
 *               one picks them), 4 seeds each, 25 DDIM steps; an image counts
 *               as recognised when zero-shot among the panel's names returns
 *               the prompted concept. The grid is written as a PNG.
 *   speed       4 images, 25 steps, wall time after compilation.
 */
import { mkdirSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { loadModel } from '../../core/diffusion/model.ts';
import { encodePng } from '../../core/diffusion/png.ts';
import { TextToImage } from '../../core/diffusion/pipeline.ts';
import { ClipEvaluator } from '../../core/eval/clip-evaluator.ts';
import * as F from '../../core/graph/functional.ts';
import { Graph } from '../../core/graph/graph.ts';
import { emitOnnx } from '../../core/graph/onnx.ts';
import { Session } from '../../core/runtime/session.ts';
import { conceptPrompt, type MiniDataset } from './data.ts';

export const PANEL_PER_CATEGORY = 6;
export const PANEL_SEEDS = [1, 2, 3, 4] as const;
export const PANEL_STEPS = 25;
export const PANEL_GUIDANCE = 7.5;

export interface PanelEntry {
  concept: string;
  name: string;
  category: string;
  /** Per seed: the panel name the evaluator saw. */
  recognisedAs: string[];
}

export interface Evaluation {
  zeroShot: { images: number; concepts: number; top1: number; perCategory: Record<string, number> };
  panel: { concepts: number; images: number; recognised: number; rate: number; steps: number; guidance: number; seeds: readonly number[]; entries: PanelEntry[] };
  /** 4 images, 25 steps, after compilation. */
  speed: { images: number; steps: number; seconds: number; compileSeconds: number };
}

/** The panel: PANEL_PER_CATEGORY concepts per category, evenly spaced through the category's list. */
export function panelConcepts(data: MiniDataset): number[] {
  const byCategory = new Map<string, number[]>();
  data.index.concepts.forEach((c, i) => byCategory.set(c.category, [...(byCategory.get(c.category) ?? []), i]));
  return [...byCategory.values()].flatMap((ids) => {
    const k = Math.min(PANEL_PER_CATEGORY, ids.length);
    return Array.from({ length: k }, (_, j) => ids[Math.floor(((j + 0.5) * ids.length) / k)]);
  });
}

export async function evaluateMini(modelDir: string, data: MiniDataset, gridFile: string, log: (line: string) => void = () => {}): Promise<Evaluation> {
  const evaluator = ClipEvaluator.open(modelDir, { provider: 'cpu' });
  const { opened, parts } = loadModel(modelDir);
  const pipe = new TextToImage(parts, { provider: 'cpu' });
  try {
    // zero-shot over all concepts
    const names = data.index.concepts.map((c) => c.name);
    const labelEmbeds = await evaluator.embedTexts(names.map(conceptPrompt));
    const imageEmbeds = await evaluator.embedImages(data.images);
    const { predicted } = await evaluator.zeroShot(imageEmbeds, labelEmbeds);
    const hits = new Map<string, [number, number]>();
    let correct = 0;
    data.index.images.forEach((im, i) => {
      const ok = predicted[i] === data.conceptOf[i];
      correct += ok ? 1 : 0;
      const [h, n] = hits.get(im.category) ?? [0, 0];
      hits.set(im.category, [h + (ok ? 1 : 0), n + 1]);
    });
    const zeroShot = {
      images: data.count,
      concepts: names.length,
      top1: correct / data.count,
      perCategory: Object.fromEntries([...hits].map(([c, [h, n]]) => [c, h / n])),
    };
    log(`zero-shot top-1 over ${names.length} concepts: ${(100 * zeroShot.top1).toFixed(1)} %`);

    // the generated panel, one category per pipeline batch
    const panel = panelConcepts(data);
    const panelNames = panel.map((i) => data.index.concepts[i].name);
    const panelEmbeds = await evaluator.embedTexts(panelNames.map(conceptPrompt));
    const entries: PanelEntry[] = [];
    const rows: Uint8Array[] = [];
    const size = evaluator.imageSize;
    let recognised = 0;
    const categories = [...new Set(panel.map((i) => data.index.concepts[i].category))];
    for (const category of categories) {
      const ids = panel.filter((i) => data.index.concepts[i].category === category);
      const prompts = ids.flatMap((i) => PANEL_SEEDS.map(() => conceptPrompt(data.index.concepts[i].name)));
      const seeds = ids.flatMap(() => [...PANEL_SEEDS]);
      const r = await pipe.generate({ prompts, seeds, steps: PANEL_STEPS, guidance: PANEL_GUIDANCE, width: size, height: size });
      const { predicted: seen } = await evaluator.zeroShot(await evaluator.embedImages(r.image, 'nhwc01'), panelEmbeds);
      ids.forEach((c, k) => {
        const as = PANEL_SEEDS.map((_, s) => panelNames[seen[k * PANEL_SEEDS.length + s]]);
        recognised += as.filter((n) => n === data.index.concepts[c].name).length;
        entries.push({ concept: data.index.concepts[c].id, name: data.index.concepts[c].name, category, recognisedAs: as });
      });
      rows.push(r.pixels);
      log(`panel: ${category} done`);
    }
    const images = panel.length * PANEL_SEEDS.length;
    await writeGrid(gridFile, rows, Math.max(...rows.map((r) => r.length / (size * size * 3))), size);

    // speed: 4 images, 25 steps, after compilation
    const speedReq = { prompts: panelNames.slice(0, 4).map(conceptPrompt), seeds: [1, 2, 3, 4], steps: PANEL_STEPS, guidance: PANEL_GUIDANCE, width: size, height: size };
    const fresh = new TextToImage(parts, { provider: 'cpu' });
    const t0 = performance.now();
    await fresh.generate(speedReq);
    const compileSeconds = (performance.now() - t0) / 1000;
    const t1 = performance.now();
    await fresh.generate(speedReq);
    const seconds = (performance.now() - t1) / 1000;
    await fresh.release();

    return {
      zeroShot,
      panel: { concepts: panel.length, images, recognised, rate: recognised / images, steps: PANEL_STEPS, guidance: PANEL_GUIDANCE, seeds: PANEL_SEEDS, entries },
      speed: { images: 4, steps: PANEL_STEPS, seconds, compileSeconds: compileSeconds - seconds },
    };
  } finally {
    await pipe.release();
    await evaluator.release();
    opened.close();
  }
}

/**
 * One row per category of `perRow` images (HWC uint8, `size` px), each shown
 * at 2x on white with a gap after every 4 (one concept's seeds). The layout
 * and the upscale run as one onnxruntime graph.
 */
async function writeGrid(file: string, rows: Uint8Array[], perRow: number, size: number): Promise<void> {
  const scale = 2;
  const gap = 6;
  const group = PANEL_SEEDS.length;
  const g = new Graph();
  const parts = rows.map((_, r) => {
    const n = rows[r].length / (size * size * 3);
    const x = F.cast(g.input(`row${r}`, [n, size, size, 3], 'uint8'), 'float32');
    const up = F.upsampleNearest(F.transpose(x, [0, 3, 1, 2]), scale); // [n, 3, 2s, 2s]
    const padded = F.pad(up, [0, 0, 0, 0, perRow - n, 0, 0, 0], 255);
    const cells = F.split(padded, 0, perRow);
    const withGaps = cells.map((c, i) => (i % group === group - 1 && i < perRow - 1 ? F.pad(c, [0, 0, 0, 0, 0, 0, 0, gap], 255) : c));
    return F.pad(F.concat(withGaps, 3), [0, 0, 0, 0, 0, 0, gap, 0], 255); // cells side by side, a gap below
  });
  const all = F.concat(parts, 2);
  const grid = F.cast(F.transpose(F.reshape(all, all.shape.slice(1)), [1, 2, 0]), 'uint8');
  const session = await Session.create(emitOnnx({ grid }), { provider: 'cpu' });
  try {
    const out = await session.run(Object.fromEntries(rows.map((r, i) => [`row${i}`, r])));
    const [h, w] = grid.shape;
    mkdirSync(path.dirname(file), { recursive: true });
    const tmp = `${file}.tmp-${process.pid}`;
    writeFileSync(tmp, encodePng(out.grid.data as Uint8Array, w, h));
    renameSync(tmp, file);
  } finally {
    await session.release();
  }
}
