/**
 * Text to image, SD 1.x: tokenize -> CLIP text encoder -> DDIM loop with
 * classifier-free guidance -> VAE decode. Three compiled graphs: the text
 * encoder, one denoising step (UNet on the cond+uncond batch, guidance and
 * the scheduler update in a single run) and the decoder to pixels. Sessions
 * are compiled once per shape and reused.
 */
import { LetheError } from '../errors.ts';
import * as F from '../graph/functional.ts';
import { Graph, type Tensor } from '../graph/graph.ts';
import { emitOnnx } from '../graph/onnx.ts';
import { clipTextEncoder, type ClipTextConfig } from '../nn/clip-text.ts';
import { ParamBinder, type KeyResolver } from '../nn/params.ts';
import { unet, type UNetConfig } from '../nn/unet.ts';
import { vaeDecode, type VaeConfig } from '../nn/vae.ts';
import { TorchCompatibleGenerator } from '../runtime/random.ts';
import { Session, type HostTensor, type SessionOptions } from '../runtime/session.ts';
import type { ClipTokenizer } from '../text/clip-tokenizer.ts';
import { coefficientFeeds, coefficientInputs, step, STEP_KEYS } from './samplers.ts';
import { ddimStepCoefficients, ddimTimesteps, type SchedulerConfig } from './schedule.ts';

/** The parts of an SD 1.x model, each with its config and where its weights are. */
export interface ModelParts {
  unet: { config: UNetConfig; resolve: KeyResolver };
  /** `prefix`: the `text_model` level, or '' for checkpoints without it. */
  textEncoder: { config: ClipTextConfig; resolve: KeyResolver; prefix: string };
  vae: { config: VaeConfig; resolve: KeyResolver };
  tokenizer: ClipTokenizer;
  scheduler: SchedulerConfig;
}

export interface GenerateRequest {
  prompts: string[];
  /** One negative prompt for every image; '' is the unconditional prompt. */
  negativePrompt?: string;
  /** One seed per prompt (initial noise from a PyTorch-compatible CPU generator). */
  seeds: number[];
  steps: number;
  guidance: number;
  width: number;
  height: number;
  eta?: number;
  /** Initial latents [B, 4, h, w] instead of noise from the seeds. */
  latents?: Float32Array;
}

export interface Progress {
  step: number;
  total: number;
  elapsedMs: number;
  /** Estimated time left, from the mean step time so far. */
  etaMs: number;
}

export interface GenerateOptions {
  onProgress?: (p: Progress) => void;
  signal?: AbortSignal;
  /** Keep every step's UNet output and latents (parity checks, debugging). */
  trace?: boolean;
}

export interface GenerateResult {
  /** RGB, 8 bits, [B, H, W, 3]. */
  pixels: Uint8Array;
  /** Float image in [0, 1], [B, H, W, 3]. */
  image: Float32Array;
  latents: Float32Array;
  timesteps: number[];
  promptEmbeds: HostTensor;
  negativeEmbeds: HostTensor;
  warnings: string[];
  trace?: { unetOut: Float32Array[]; latents: Float32Array[] };
  timings: { textMs: number; denoiseMs: number; decodeMs: number; compileMs: number };
  /** The execution provider the denoising ran on, and why not the one asked for, if so. */
  provider: string;
  providerNote: string | null;
}

export class GenerationCancelled extends LetheError {
  constructor(readonly atStep: number) {
    super('cancelled', `generation cancelled at step ${atStep}`);
  }
}

export class InvalidRequestError extends LetheError {
  constructor(message: string) {
    super('invalid-request', message);
  }
}

export class TextToImage {
  private readonly sessions = new Map<string, Promise<Session>>();
  private compileMs = 0;

  constructor(
    readonly model: ModelParts,
    private readonly sessionOptions: SessionOptions = {},
  ) {}

  /** 2^(levels - 1): pixels per latent cell. */
  get vaeScaleFactor(): number {
    return 2 ** (this.model.vae.config.block_out_channels.length - 1);
  }

  async generate(req: GenerateRequest, opts: GenerateOptions = {}): Promise<GenerateResult> {
    const { b, h, w } = this.validate(req);
    const t0 = performance.now();
    const warnings: string[] = [];
    const tok = this.model.tokenizer;
    const encodeIds = (texts: string[]): BigInt64Array => {
      const out = new BigInt64Array(texts.length * 77);
      texts.forEach((text, i) => {
        const r = tok.encodeForModel(text, 77);
        if (r.truncated) warnings.push(`prompt too long: dropped "${r.droppedText}"`);
        out.set(Array.from(r.ids, (v) => BigInt(v)), i * 77);
      });
      return out;
    };
    const condIds = encodeIds(req.prompts);
    const uncondIds = encodeIds(req.prompts.map(() => req.negativePrompt ?? ''));
    const textSession = await this.session(`text:${b}`, () => this.textGraph(b));
    const promptEmbeds = (await textSession.run({ input_ids: condIds })).embeds;
    const negativeEmbeds = (await textSession.run({ input_ids: uncondIds })).embeds;
    const textMs = performance.now() - t0;

    // Context for the doubled batch: the uncond half first, as diffusers does.
    const context = new Float32Array(promptEmbeds.data.length * 2);
    context.set(negativeEmbeds.data as Float32Array, 0);
    context.set(promptEmbeds.data as Float32Array, promptEmbeds.data.length);

    const generators = req.seeds.map((s) => new TorchCompatibleGenerator(s));
    const per = 4 * h * w;
    let latents: Float32Array = req.latents ? Float32Array.from(req.latents) : new Float32Array(b * per);
    if (!req.latents) generators.forEach((g, i) => latents.set(g.randn(per), i * per));

    const eta = req.eta ?? 0;
    const timesteps = ddimTimesteps(this.model.scheduler, req.steps);
    const stepSession = await this.session(`step:${b}:${h}:${w}:${eta > 0}`, () => this.stepGraph(b, h, w, eta > 0));
    const trace = opts.trace ? { unetOut: [] as Float32Array[], latents: [] as Float32Array[] } : undefined;
    const t1 = performance.now();
    for (const [k, t] of timesteps.entries()) {
      if (opts.signal?.aborted) throw new GenerationCancelled(k);
      const coeffs = ddimStepCoefficients(this.model.scheduler, t, req.steps, eta);
      const feeds: Record<string, Float32Array> = {
        latents,
        t: new Float32Array([t]),
        context,
        guidance: new Float32Array([req.guidance]),
        ...coefficientFeeds(STEP_KEYS, 'ddim', coeffs),
      };
      if (eta > 0) {
        const noise = new Float32Array(b * per);
        generators.forEach((g, i) => noise.set(g.randn(per), i * per));
        feeds.noise = noise;
      }
      const out = await stepSession.run(feeds, trace ? ['next', 'unet_out'] : ['next']);
      latents = out.next.data as Float32Array;
      if (trace) {
        trace.unetOut.push(out.unet_out.data as Float32Array);
        trace.latents.push(latents);
      }
      const elapsedMs = performance.now() - t1;
      opts.onProgress?.({ step: k + 1, total: timesteps.length, elapsedMs, etaMs: (elapsedMs / (k + 1)) * (timesteps.length - k - 1) });
    }
    const t2 = performance.now();
    const decoded = await (await this.session(`decode:${b}:${h}:${w}`, () => this.decodeGraph(b, h, w))).run({ latents });
    const t3 = performance.now();
    return {
      pixels: decoded.pixels.data as Uint8Array,
      image: decoded.image.data as Float32Array,
      latents,
      timesteps,
      promptEmbeds,
      negativeEmbeds,
      warnings,
      ...(trace ? { trace } : {}),
      timings: { textMs, denoiseMs: t2 - t1, decodeMs: t3 - t2, compileMs: this.compileMs },
      provider: stepSession.provider,
      providerNote: stepSession.fallbackNote,
    };
  }

  async release(): Promise<void> {
    for (const s of this.sessions.values()) await (await s).release();
    this.sessions.clear();
  }

  private validate(req: GenerateRequest): { b: number; h: number; w: number } {
    const f = this.vaeScaleFactor;
    const b = req.prompts.length;
    if (b === 0) throw new InvalidRequestError('no prompt given');
    if (req.seeds.length !== b) throw new InvalidRequestError(`${req.seeds.length} seeds for ${b} prompts: give one seed per image`);
    for (const [name, v] of [['width', req.width], ['height', req.height]] as const) {
      if (!Number.isInteger(v) || v < f || v % f !== 0) throw new InvalidRequestError(`${name} ${v} must be a positive multiple of ${f} (the VAE's scale factor)`);
    }
    if (!Number.isInteger(req.steps) || req.steps < 1 || req.steps > this.model.scheduler.num_train_timesteps) {
      throw new InvalidRequestError(`steps must be between 1 and ${this.model.scheduler.num_train_timesteps}, got ${req.steps}`);
    }
    if (!Number.isFinite(req.guidance)) throw new InvalidRequestError(`guidance must be a number, got ${req.guidance}`);
    const [h, w] = [req.height / f, req.width / f];
    if (req.latents && req.latents.length !== b * 4 * h * w) throw new InvalidRequestError(`latents must have ${b * 4 * h * w} values ([${b}, 4, ${h}, ${w}])`);
    return { b, h, w };
  }

  private session(key: string, build: () => Record<string, Tensor>): Promise<Session> {
    let s = this.sessions.get(key);
    if (!s) {
      const t0 = performance.now();
      s = Session.create(emitOnnx(build(), key.split(':')[0]), this.sessionOptions).then((x) => {
        this.compileMs += performance.now() - t0;
        return x;
      });
      this.sessions.set(key, s);
    }
    return s;
  }

  private textGraph(b: number): Record<string, Tensor> {
    const g = new Graph();
    const binder = new ParamBinder(g, this.model.textEncoder.resolve);
    const ids = g.input('input_ids', [b, 77], 'int64');
    const out = clipTextEncoder(binder.scope(this.model.textEncoder.prefix), this.model.textEncoder.config, ids);
    binder.finish('CLIP text encoder');
    return { embeds: out.lastHiddenState };
  }

  /** One guided DDIM step: next = step(x, e_u + s (e_c - e_u)). */
  private stepGraph(b: number, h: number, w: number, withNoise: boolean): Record<string, Tensor> {
    const g = new Graph();
    const binder = new ParamBinder(g, this.model.unet.resolve);
    const cfg = this.model.unet.config;
    const latents = g.input('latents', [b, cfg.in_channels, h, w]);
    const t = g.input('t', []);
    const context = g.input('context', [2 * b, 77, cfg.cross_attention_dim]);
    const guidance = g.input('guidance', []);
    const coeffs = coefficientInputs(g, STEP_KEYS, 'ddim');
    const unetOut = unet(binder.scope(''), cfg, F.concat([latents, latents], 0), t, context);
    binder.finish('UNet');
    const [uncond, cond] = F.split(unetOut, 0, 2);
    const eps = F.add(uncond, F.mul(F.sub(cond, uncond), guidance));
    const { prev } = withNoise ? step(latents, eps, coeffs, g.input('noise', latents.shape)) : step(latents, eps, { ...coeffs, sigma: 0 });
    return { next: prev, unet_out: unetOut };
  }

  private decodeGraph(b: number, h: number, w: number): Record<string, Tensor> {
    const g = new Graph();
    const binder = new ParamBinder(g, this.model.vae.resolve);
    const cfg = this.model.vae.config;
    const latents = g.input('latents', [b, cfg.latent_channels, h, w]);
    const x = vaeDecode(binder.scope(''), cfg, F.div(latents, cfg.scaling_factor));
    binder.finish('VAE');
    const image = F.transpose(F.clip(F.add(F.div(x, 2), 0.5), 0, 1), [0, 2, 3, 1]);
    // +0.5 then truncation: round to nearest 8-bit value.
    const pixels = F.cast(F.add(F.mul(image, 255), 0.5), 'uint8');
    return { image, pixels };
  }
}
