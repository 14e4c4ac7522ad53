/**
 * A CLIP model as an evaluator: the text tower with its projection
 * (CLIPTextModelWithProjection) and the image tower (CLIPVisionModelWithProjection),
 * read from a model folder's `text_encoder/` and `image_encoder/` (lethe-mini
 * ships both), giving normalised embeddings, CLIP scores and zero-shot
 * classification. Every tensor operation, the arg-max included, runs in
 * onnxruntime; batches are padded to a fixed size so each graph compiles once.
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { FileFormatError } from '../errors.ts';
import * as F from '../graph/functional.ts';
import { Graph, type Tensor } from '../graph/graph.ts';
import { emitOnnx } from '../graph/onnx.ts';
import { openSafetensors, type SafetensorsFile } from '../io/safetensors.ts';
import { clipImageEmbeds, clipTextEmbeds } from '../nn/clip-model.ts';
import { parseClipTextConfig, type ClipTextConfig } from '../nn/clip-text.ts';
import { parseClipVisionConfig, type ClipVisionConfig } from '../nn/clip-vision.ts';
import { ParamBinder, prefixResolver } from '../nn/params.ts';
import { Session, type SessionOptions } from '../runtime/session.ts';
import { ClipTokenizer } from '../text/clip-tokenizer.ts';

export interface ZeroShotResult {
  /** Index into the labels of each image's best match. */
  predicted: Int32Array;
  /** Cosine similarity of that match. */
  similarity: Float32Array;
}

const BATCH = 64;

export class ClipEvaluator {
  private readonly sessions = new Map<string, Promise<Session>>();

  private constructor(
    private readonly files: SafetensorsFile[],
    private readonly tokenizer: ClipTokenizer,
    readonly textConfig: ClipTextConfig,
    readonly visionConfig: ClipVisionConfig,
    readonly projectionDim: number,
    private readonly sessionOptions: SessionOptions,
  ) {}

  /** From a model folder with `tokenizer/`, `text_encoder/` (with text_projection) and `image_encoder/`. */
  static open(modelDir: string, sessionOptions: SessionOptions = {}): ClipEvaluator {
    const need = ['tokenizer', 'text_encoder/config.json', 'text_encoder/model.safetensors', 'image_encoder/config.json', 'image_encoder/model.safetensors'];
    const missing = need.filter((p) => !existsSync(path.join(modelDir, p)));
    if (missing.length) {
      throw new FileFormatError(modelDir, `${modelDir} has no CLIP evaluator: missing ${missing.join(', ')}. The evaluator needs a model that ships its image tower (image_encoder/) and a text encoder with a projection, such as lethe-mini`);
    }
    const readJson = (p: string): Record<string, unknown> => JSON.parse(readFileSync(path.join(modelDir, p), 'utf8')) as Record<string, unknown>;
    const textJson = readJson('text_encoder/config.json');
    const visionJson = readJson('image_encoder/config.json');
    const files = [openSafetensors(path.join(modelDir, 'text_encoder/model.safetensors')), openSafetensors(path.join(modelDir, 'image_encoder/model.safetensors'))];
    const projectionDim = Number(textJson.projection_dim);
    const vision = parseClipVisionConfig(visionJson, path.join(modelDir, 'image_encoder/config.json'));
    if (!files[0].tensors.has('text_projection.weight') || projectionDim !== vision.projection_dim) {
      for (const f of files) f.close();
      throw new FileFormatError(modelDir, `${modelDir}: the text encoder has no text_projection matching the image tower's projection_dim ${vision.projection_dim}; it must be a CLIPTextModelWithProjection`);
    }
    return new ClipEvaluator(files, ClipTokenizer.fromDirectory(path.join(modelDir, 'tokenizer')), parseClipTextConfig(textJson), vision, projectionDim, sessionOptions);
  }

  get imageSize(): number {
    return this.visionConfig.image_size;
  }

  /** Normalised text embeddings [N, P] of `texts`. */
  async embedTexts(texts: readonly string[]): Promise<Float32Array> {
    const length = this.textConfig.max_position_embeddings;
    const session = await this.session('text', () => this.textGraph(length));
    return this.batched(texts.length, this.projectionDim, async (start, n) => {
      const ids = new BigInt64Array(BATCH * length);
      for (let i = 0; i < n; i++) {
        const enc = this.tokenizer.encodeForModel(texts[start + i], length);
        for (let j = 0; j < length; j++) ids[i * length + j] = BigInt(enc.ids[j]);
      }
      return (await session.run({ input_ids: ids })).embeds.data as Float32Array;
    });
  }

  /**
   * Normalised image embeddings [N, P]: of RGB images [N, 3, S, S] in [-1, 1]
   * (the VAE's and the dataset's form), or with `layout: 'nhwc01'` of
   * [N, S, S, 3] in [0, 1] (what the pipeline returns).
   */
  async embedImages(images: Float32Array, layout: 'nchw-signed' | 'nhwc01' = 'nchw-signed'): Promise<Float32Array> {
    const per = 3 * this.imageSize * this.imageSize;
    if (images.length % per !== 0) throw new FileFormatError('', `embedImages: ${images.length} values is not a whole number of ${this.imageSize}x${this.imageSize} RGB images`);
    const session = await this.session(`image:${layout}`, () => this.imageGraph(layout));
    return this.batched(images.length / per, this.projectionDim, async (start, n) => {
      const batch = new Float32Array(BATCH * per);
      batch.set(images.subarray(start * per, (start + n) * per));
      return (await session.run({ images: batch })).embeds.data as Float32Array;
    });
  }

  /** Each image's best-matching label embedding (first maximum on ties). */
  async zeroShot(imageEmbeds: Float32Array, labelEmbeds: Float32Array): Promise<ZeroShotResult> {
    const p = this.projectionDim;
    const k = labelEmbeds.length / p;
    const session = await this.session(`match:${k}`, () => this.matchGraph(k));
    const n = imageEmbeds.length / p;
    const predicted = new Int32Array(n);
    const similarity = new Float32Array(n);
    for (let start = 0; start < n; start += BATCH) {
      const m = Math.min(BATCH, n - start);
      const batch = new Float32Array(BATCH * p);
      batch.set(imageEmbeds.subarray(start * p, (start + m) * p));
      const out = await session.run({ images: batch, labels: labelEmbeds });
      predicted.set(Int32Array.from((out.index.data as Float32Array).subarray(0, m)), start);
      similarity.set((out.similarity.data as Float32Array).subarray(0, m), start);
    }
    return { predicted, similarity };
  }

  async release(): Promise<void> {
    for (const s of this.sessions.values()) await (await s).release();
    this.sessions.clear();
    for (const f of this.files) f.close();
  }

  private async batched(count: number, width: number, run: (start: number, n: number) => Promise<Float32Array>): Promise<Float32Array> {
    const out = new Float32Array(count * width);
    for (let start = 0; start < count; start += BATCH) {
      const n = Math.min(BATCH, count - start);
      out.set((await run(start, n)).subarray(0, n * width), start * width);
    }
    return out;
  }

  private session(key: string, build: () => Record<string, Tensor>): Promise<Session> {
    let s = this.sessions.get(key);
    if (!s) {
      s = Session.create(emitOnnx(build(), key), this.sessionOptions);
      this.sessions.set(key, s);
    }
    return s;
  }

  private binder(g: Graph): ParamBinder {
    return new ParamBinder(g, prefixResolver(this.files));
  }

  private textGraph(length: number): Record<string, Tensor> {
    const g = new Graph();
    const binder = this.binder(g);
    const ids = g.input('input_ids', [BATCH, length], 'int64');
    const embeds = clipTextEmbeds(binder.scope(''), this.textConfig, this.projectionDim, ids);
    binder.finish('CLIP text encoder');
    return { embeds };
  }

  private imageGraph(layout: 'nchw-signed' | 'nhwc01'): Record<string, Tensor> {
    const g = new Graph();
    const binder = this.binder(g);
    const s = this.imageSize;
    const images = layout === 'nhwc01' ? g.input('images', [BATCH, s, s, 3]) : g.input('images', [BATCH, 3, s, s]);
    const signed = layout === 'nhwc01' ? F.sub(F.mul(F.transpose(images, [0, 3, 1, 2]), 2), 1) : images;
    const embeds = clipImageEmbeds(binder.scope(''), this.visionConfig, signed);
    binder.finish('CLIP image encoder');
    return { embeds };
  }

  private matchGraph(k: number): Record<string, Tensor> {
    const g = new Graph();
    const images = g.input('images', [BATCH, this.projectionDim]);
    const labels = g.input('labels', [k, this.projectionDim]);
    const sim = F.matmul(images, F.transpose(labels, [1, 0]));
    const best = F.reduceMax(sim, [1], true);
    // First arg-max: the earliest column reaching the maximum scores highest.
    const earliness = g.constant(Float32Array.from({ length: k }, (_, i) => k - i), [k]);
    const index = F.sub(k, F.reduceMax(F.where(F.equal(sim, best), earliness, 0), [1]));
    return { index, similarity: F.reshape(best, [BATCH]) };
  }
}

