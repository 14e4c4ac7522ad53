/**
 * Seeded random numbers that are identical on every platform and match
 * PyTorch's CPU generator seed for seed, so that an image made by Lethe from
 * seed S starts from the same latent noise as a diffusers pipeline given
 * `generator=torch.Generator('cpu').manual_seed(S)`.
 *
 * What torch does (ATen's CPUGeneratorImpl, DistributionsHelper.h and
 * native/cpu/DistributionTemplates.h). Verified bit for bit against torch
 * 1.13 (Debian's build, GCC 12, x86-64; AVX2 and AVX-512 dispatch give the
 * same numbers), see tests/data/gen_torch_random.py; torch 2.x's sources
 * implement the same algorithm, but no 2.x build could be run here, so how
 * its compiler fused multiply-adds (below) is assumed, not checked:
 *
 * - Engine: mt19937. `manual_seed(seed)` takes the seed as a uint64 (a
 *   negative Python int is read as two's complement) and seeds mt19937 with
 *   its LOW 32 BITS only, so seeds 5 and 2**32 + 5 give the same numbers.
 *   Seeding also clears the cached Box-Muller value (below).
 * - `torch.rand(float32)`: one 32-bit draw per value, `(x & 0xffffff) * 2^-24`.
 * - `torch.randn(float32)` with numel >= 16 (the "vector" path): draw numel
 *   24-bit uniforms as above, then for each whole chunk of 16 at j and each
 *   i in 0..7: u1 = 1 - d[j+i], u2 = d[j+i+8], r = sqrt(-2 log u1),
 *   t = 2 pi u2, d[j+i] = r cos t, d[j+i+8] = r sin t. If numel % 16 != 0 the
 *   last 16 elements are refilled with 16 fresh uniforms and transformed again
 *   (the numel % 16 uniforms drawn for the partial chunk are thrown away).
 *   On x86-64 with AVX2 or AVX-512 (the usual diffusers machine) log, sin and
 *   cos are avx_mathfun.h's float32 Cephes polynomials, not libm, and GCC
 *   fuses some of their multiply-adds into FMA instructions. Both are
 *   reproduced here operation by operation: Math.fround after every float32
 *   + - * and sqrt (for one operation on float32 operands, double-then-fround
 *   IS float32 arithmetic, as 53 >= 2*24 + 2), and an exact float32 FMA
 *   (`fma32`). Result: bit-identical to torch (0 differences in 33.5 million
 *   values checked while writing this; the tests check 0.28 million, and
 *   both variants below agree with a C build of the same steps on all 2^24
 *   inputs of log and of sincos) using only IEEE-754 basic operations, which
 *   every JS engine rounds correctly (Math.sqrt compiles to the hardware
 *   square-root instruction). No Math.log/sin/cos is used, so this path, the
 *   one latents take, is bit-for-bit the same on every platform, engine and
 *   engine version.
 * - `torch.randn(float32)` with numel < 16 (the "scalar" path): a double
 *   Box-Muller with 53-bit uniforms (two 32-bit draws, the first is the high
 *   word: ((a & 0x1fffff) * 2^32 + b) * 2^-53): u1, u2 drawn in that order,
 *   r = sqrt(-2 log1p(-u2)), t = 2 pi u1, returns r cos t and CACHES r sin t
 *   in the generator for the next scalar-path value, across calls (the vector
 *   path neither uses nor clears the cache). Results are rounded to float32.
 *   This needs double log1p/sin/cos, i.e. Math.log1p/sin/cos, which the
 *   ECMAScript spec does not require to be correctly rounded. V8 (Node,
 *   Electron) implements them in portable C++ of its own (fdlibm/glibc ports),
 *   not the platform libm, so one Node/Electron version gives the same
 *   numbers on every OS and CPU. Against torch (glibc), or across V8 versions,
 *   the double may differ in its last bit; rounding to float32 hides that
 *   unless the double lies within 2^-53 relative of a float32 rounding
 *   midpoint (about one value in 2^28), and then it shows as 1 float32 ulp.
 *   Hence the tests allow 1 ulp on this path (every reference value matches
 *   exactly today) and demand exact equality on the vector path.
 *
 * Not reproduced: torch.randn on machines WITHOUT AVX2 (ARM, Apple silicon,
 * ATEN_CPU_CAPABILITY=default) uses libm logf/cosf/sinf in the vector path,
 * and torch builds whose compiler does not fuse multiply-adds (clang, MSVC)
 * round differently (see `TorchGeneratorOptions.fusedMultiplyAdd`): torch
 * itself gives different randn on those (e.g. without AVX2 about 40% of
 * values differ, by up to 2e-6). Lethe gives the x86-64 Linux numbers by
 * default. torch.randint, randperm, float64/half tensors and non-standard
 * mean/std are not provided.
 */
import { LetheError } from '../errors.ts';

const N = 624;
const M = 397;
// The state is kept as int32 (same bits as uint32) so V8 stays on int32 paths.
const MATRIX_A = 0x9908b0df | 0;
const UPPER_MASK = 0x80000000 | 0;
const LOWER_MASK = 0x7fffffff;

const TWO_POW_M24 = 2 ** -24;
const TWO_POW_32 = 2 ** 32;
const TWO_POW_M53 = 2 ** -53;
const UINT64_MAX = (1n << 64n) - 1n;
const INT64_MIN = -(1n << 63n);

const fr = Math.fround;

// Constants of avx_mathfun.h (Cephes), rounded to float32 exactly as the C
// initialisers `static const float x[8] = { 0.707106781186547524, ... }` do.
const SQRTHF = fr(0.707106781186547524);
const LOG_P0 = fr(7.0376836292e-2);
const LOG_P1 = fr(-1.151461031e-1);
const LOG_P2 = fr(1.167699874e-1);
const LOG_P3 = fr(-1.2420140846e-1);
const LOG_P4 = fr(1.4249322787e-1);
const LOG_P5 = fr(-1.6668057665e-1);
const LOG_P6 = fr(2.0000714765e-1);
const LOG_P7 = fr(-2.4999993993e-1);
const LOG_P8 = fr(3.3333331174e-1);
const LOG_Q1 = fr(-2.1219444e-4);
const LOG_Q2 = fr(0.693359375);
const MINUS_DP1 = fr(-0.78515625);
const MINUS_DP2 = fr(-2.4187564849853515625e-4);
const MINUS_DP3 = fr(-3.77489497744594108e-8);
const SINCOF_P0 = fr(-1.9515295891e-4);
const SINCOF_P1 = fr(8.3321608736e-3);
const SINCOF_P2 = fr(-1.6666654611e-1);
const COSCOF_P0 = fr(2.443315711809948e-5);
const COSCOF_P1 = fr(-1.388731625493765e-3);
const COSCOF_P2 = fr(4.166664568298827e-2);
const FOPI = fr(1.27323954473516); // 4 / pi
/** `_mm256_set1_ps(2.0f * c10::pi<double>)`: 2 pi in double, then float. */
const TWO_PI_F = fr(2 * Math.PI);

/** 2^-(b+1) for b = 0..24: scales an integer in [2^b, 2^(b+1)) into [0.5, 1). */
const INV_POW2 = Float64Array.from({ length: 26 }, (_, b) => 2 ** -(b + 1));

/** A checkpoint of a generator; plain JSON (numbers are exact in JSON). */
export interface GeneratorState {
  readonly kind: 'torch-mt19937';
  /** The generator's seed (uint64) as a decimal string; informational. */
  readonly seed: string;
  /** The 624 mt19937 state words. */
  readonly mt: readonly number[];
  /** Next word of `mt` to temper and return; 624 means "twist first". */
  readonly index: number;
  /** torch's cached second Box-Muller value (scalar path), or null. */
  readonly nextNormal: number | null;
}

export interface TorchGeneratorOptions {
  /**
   * randn (numel >= 16) as torch's x86-64 Linux builds compute it, with the
   * multiply-adds GCC fuses into FMA instructions (default, true), or with
   * every product rounded separately as avx_mathfun.h is written (false),
   * which is what a build whose compiler does not contract across intrinsics
   * gives (clang: macOS x86-64; MSVC: Windows, presumably; only the default
   * is checked against a real torch). The two differ by 1-2 ulp in about 1%
   * of values. rand and randn with numel < 16 are unaffected.
   */
  readonly fusedMultiplyAdd?: boolean;
}

/** Reads a seed the way `torch.Generator.manual_seed` does: a uint64, negatives as two's complement. */
function toUint64Seed(seed: number | bigint): bigint {
  let s: bigint;
  if (typeof seed === 'number') {
    if (!Number.isSafeInteger(seed)) {
      throw new LetheError(
        'invalid-seed',
        `Seed ${seed} is not an integer that a double holds exactly; pass it as a bigint or use an integer below 2^53.`,
      );
    }
    s = BigInt(seed);
  } else {
    s = seed;
  }
  if (s < INT64_MIN || s > UINT64_MAX) {
    throw new LetheError('invalid-seed', `Seed ${s} is outside [-2^63, 2^64 - 1], the range torch accepts.`);
  }
  return BigInt.asUintN(64, s);
}

/**
 * The seed of image `index` (0-based) of a batch started from `baseSeed`:
 * `baseSeed + index`. This is AUTOMATIC1111's convention for batches (image i
 * of a batch of seed S is reproducible alone as seed S + i), so a user can
 * regenerate any one image of a batch by its own seed. Each image gets its
 * own generator; a batch is NOT one generator drawing several latents.
 * Works on bigints so 64-bit seeds do not lose precision; the result is
 * returned in the type given.
 */
export function seedForImage(baseSeed: number, index: number): number;
export function seedForImage(baseSeed: bigint, index: number): bigint;
export function seedForImage(baseSeed: number | bigint, index: number): number | bigint;
export function seedForImage(baseSeed: number | bigint, index: number): number | bigint {
  if (!Number.isSafeInteger(index) || index < 0) {
    throw new LetheError('invalid-seed', `Batch index ${index} must be a non-negative integer.`);
  }
  if (typeof baseSeed === 'bigint') return baseSeed + BigInt(index);
  const s = baseSeed + index;
  if (!Number.isSafeInteger(baseSeed) || !Number.isSafeInteger(s)) {
    throw new LetheError('invalid-seed', `Seed ${baseSeed} + ${index} is not exact as a number; pass the seed as a bigint.`);
  }
  return s;
}

/**
 * torch's CPU generator: `new TorchCompatibleGenerator(s)` is
 * `torch.Generator('cpu').manual_seed(s)`, `randn(n)` is
 * `torch.randn(n, generator=g, dtype=torch.float32)` (any shape with n
 * elements, row-major) and `rand(n)` is `torch.rand(...)`. Successive calls
 * continue one stream exactly as successive torch calls on one generator do.
 */
export class TorchCompatibleGenerator {
  private seedValue: bigint;
  private readonly mt = new Int32Array(N);
  private index = N;
  private nextNormal: number | null = null;
  /** Scratch for the 16 uniforms (as 24-bit integers) of one Box-Muller chunk. */
  private readonly chunk = new Int32Array(16);
  private readonly fill16: (k: Int32Array, out: Float32Array, at: number) => void;

  constructor(seed: number | bigint, options: TorchGeneratorOptions = {}) {
    this.seedValue = toUint64Seed(seed);
    this.fill16 = options.fusedMultiplyAdd === false ? boxMuller16Plain : boxMuller16Fused;
    const mt = this.mt;
    mt[0] = Number(this.seedValue & 0xffffffffn); // only the low 32 bits, as torch
    for (let i = 1; i < N; i++) {
      const prev = mt[i - 1];
      mt[i] = Math.imul(1812433253, prev ^ (prev >>> 30)) + i;
    }
    this.index = N;
  }

  /** The seed as torch's `initial_seed()` reports it: a uint64 (after `setState`, the restored one). */
  get seed(): bigint {
    return this.seedValue;
  }

  /** The next raw 32-bit mt19937 output (torch's `generator->random()`). */
  nextUint32(): number {
    return this.next32() >>> 0;
  }

  /** The next mt19937 output as an int32 (same bits). */
  private next32(): number {
    if (this.index >= N) this.twist();
    let y = this.mt[this.index++];
    y ^= y >>> 11;
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    return y ^ (y >>> 18);
  }

  /** Writes the low 24 bits of the next `count` outputs to dst[start..]. */
  private fill24(dst: Int32Array, start: number, count: number): void {
    const mt = this.mt;
    let idx = this.index;
    for (let i = start, end = start + count; i < end; i++) {
      if (idx >= N) {
        this.twist();
        idx = 0;
      }
      let y = mt[idx++];
      y ^= y >>> 11;
      y ^= (y << 7) & 0x9d2c5680;
      y ^= (y << 15) & 0xefc60000;
      dst[i] = (y ^ (y >>> 18)) & 0xffffff;
    }
    this.index = idx;
  }

  private twist(): void {
    const mt = this.mt;
    let i = 0;
    for (; i < N - M; i++) {
      const y = (mt[i] & UPPER_MASK) | (mt[i + 1] & LOWER_MASK);
      mt[i] = mt[i + M] ^ (y >>> 1) ^ (y & 1 ? MATRIX_A : 0);
    }
    for (; i < N - 1; i++) {
      const y = (mt[i] & UPPER_MASK) | (mt[i + 1] & LOWER_MASK);
      mt[i] = mt[i + M - N] ^ (y >>> 1) ^ (y & 1 ? MATRIX_A : 0);
    }
    const y = (mt[N - 1] & UPPER_MASK) | (mt[0] & LOWER_MASK);
    mt[N - 1] = mt[M - 1] ^ (y >>> 1) ^ (y & 1 ? MATRIX_A : 0);
    this.index = 0;
  }

  /** A uniform in [0, 1) with 53 random bits (torch's `uniform_real_distribution<double>`). */
  private uniform53(): number {
    const hi = this.next32() & 0x1fffff;
    const lo = this.next32() >>> 0;
    return (hi * TWO_POW_32 + lo) * TWO_POW_M53;
  }

  /** `torch.rand(numel, generator=g, dtype=torch.float32)`: uniforms in [0, 1). */
  rand(numel: number): Float32Array {
    checkNumel(numel);
    const out = new Float32Array(numel);
    const block = new Int32Array(Math.min(numel, 4096));
    for (let at = 0; at < numel; at += block.length) {
      const count = Math.min(block.length, numel - at);
      this.fill24(block, 0, count);
      for (let i = 0; i < count; i++) out[at + i] = block[i] * TWO_POW_M24;
    }
    return out;
  }

  /** `torch.randn(numel, generator=g, dtype=torch.float32)`: standard normals. */
  randn(numel: number): Float32Array {
    checkNumel(numel);
    const out = new Float32Array(numel);
    if (numel < 16) {
      for (let i = 0; i < numel; i++) out[i] = this.normalScalar();
      return out;
    }
    const chunk = this.chunk;
    const whole = numel - (numel % 16);
    for (let j = 0; j < whole; j += 16) {
      this.fill24(chunk, 0, 16);
      this.fill16(chunk, out, j);
    }
    if (whole !== numel) {
      // torch fills all numel uniforms first, then redoes the last 16 with
      // fresh draws: the partial chunk's uniforms are drawn and discarded.
      for (let i = whole; i < numel; i++) this.next32();
      this.fill24(chunk, 0, 16);
      this.fill16(chunk, out, numel - 16);
    }
    return out;
  }

  /** One value of torch's `at::normal_distribution<double>` (numel < 16 path). */
  private normalScalar(): number {
    const cached = this.nextNormal;
    if (cached !== null) {
      this.nextNormal = null;
      return cached;
    }
    const u1 = this.uniform53();
    const u2 = this.uniform53();
    const r = Math.sqrt(-2 * Math.log1p(-u2));
    const theta = 2 * Math.PI * u1;
    this.nextNormal = r * Math.sin(theta);
    return r * Math.cos(theta);
  }

  /** A JSON-serialisable checkpoint; `setState` resumes the identical stream. */
  state(): GeneratorState {
    return {
      kind: 'torch-mt19937',
      seed: this.seed.toString(),
      mt: Array.from(this.mt, (w) => w >>> 0),
      index: this.index,
      nextNormal: this.nextNormal,
    };
  }

  /** Restores a checkpoint from `state()` (of this or any generator). */
  setState(state: GeneratorState): void {
    const ok =
      state !== null &&
      typeof state === 'object' &&
      state.kind === 'torch-mt19937' &&
      Array.isArray(state.mt) &&
      state.mt.length === N &&
      state.mt.every((w) => Number.isInteger(w) && w >= 0 && w <= 0xffffffff) &&
      Number.isInteger(state.index) &&
      state.index >= 0 &&
      state.index <= N &&
      (state.nextNormal === null || Number.isFinite(state.nextNormal)) &&
      typeof state.seed === 'string' &&
      /^\d+$/.test(state.seed) &&
      BigInt(state.seed) <= UINT64_MAX;
    if (!ok) {
      throw new LetheError('invalid-generator-state', 'The saved random-generator state is malformed; it cannot be resumed.');
    }
    for (let i = 0; i < N; i++) this.mt[i] = state.mt[i] | 0;
    this.index = state.index;
    this.nextNormal = state.nextNormal;
    this.seedValue = BigInt(state.seed);
  }
}

function checkNumel(numel: number): void {
  if (!Number.isSafeInteger(numel) || numel < 0) {
    throw new RangeError(`numel must be a non-negative integer, got ${numel}`);
  }
}

// ---------------------------------------------------------------------------
// float32 fused multiply-add, exactly.
//
// a * b of two float32 values is exact in a double (48 <= 53 bits), so
// s = a * b + c is a*b+c rounded once, to double; rounding s again to float32
// gives the correctly rounded float32 result except when s landed exactly on
// a float32 rounding midpoint (the first rounding may have made a tie out of
// a value that was not one). With r = fround(s) and d = s - r, s is such a
// midpoint exactly when r + 2d (= 2s - r, computed exactly: it lies in r's
// binade or the one below, whose spacing divides s's) is itself a float32,
// the neighbour of r on s's side; otherwise |2d| is less than the gap to
// that neighbour. In the rare midpoint case the exact error of the addition
// (TwoSum) says which way the true value lies. Only IEEE-754 double + - *
// and fround are used, so this is exact on every engine.

/** float32 fma(a, b, c) of float32 values, correctly rounded (normal-range results). Exported for the tests. */
export function fma32(a: number, b: number, c: number): number {
  const s = a * b + c;
  const r = fr(s);
  const m = 2 * s - r;
  if (fr(m) !== m || m === r) return r;
  return fma32Tie(a * b, c, s, r);
}

function fma32Tie(p: number, c: number, s: number, r: number): number {
  const bb = s - p;
  const err = p - (s - bb) + (c - bb); // s + err == p + c exactly
  if (err === 0) return r; // a true tie: round-half-even already right
  const quarterUlp = Math.abs(s - r) / 2; // s is half an ulp from r
  return fr(err > 0 ? s + quarterUlp : s - quarterUlp);
}

// ---------------------------------------------------------------------------
// torch's normal_fill_16_AVX2 (ATen/native/cpu/DistributionTemplates.h) with
// log256_ps and sincos256_ps (ATen/native/cpu/avx_mathfun.h), on 16 uniforms
// given as 24-bit integers k (uniform = k * 2^-24), written to out[at..at+16).
//
// Two variants. `boxMuller16Fused` is what GCC emits for torch's x86-64 Linux
// builds: the AVX2/AVX-512 kernels are compiled with -mfma and GCC's default
// -ffp-contract=fast fuses a multiply feeding an add into one FMA (read off
// the disassembly of Debian's libtorch_cpu 1.13 built by GCC 12, confirmed by
// comparing outputs). Which pairs are fused is marked below. `boxMuller16Plain`
// rounds every product separately, as the source reads (and as compilers that
// do not contract across intrinsics, e.g. clang and MSVC, compile it).

function boxMuller16Fused(k: Int32Array, out: Float32Array, at: number): void {
  for (let i = 0; i < 8; i++) {
    sinCosFused(out, at + i, radiusFused(0x1000000 - k[i]), k[i + 8] * TWO_POW_M24);
  }
}

/** sqrt(-2 * log256_ps(u1)) for u1 = n * 2^-24, n in [1, 2^24] (exact in float32). */
function radiusFused(n: number): number {
  // frexp by integer arithmetic: u1 = x * 2^e, x in [0.5, 1).
  const b = 31 - Math.clz32(n); // n in [2^b, 2^(b+1))
  let x = n * INV_POW2[b];
  let e = b - 23;
  if (x < SQRTHF) {
    e -= 1;
    x = x + x - 1; // exact: x in [0.5, 0.71)
  } else {
    x = x - 1; // exact (Sterbenz)
  }
  const z = fr(x * x);
  let y = fma32(LOG_P0, x, LOG_P1); // fused: y*x + p
  y = fma32(y, x, LOG_P2);
  y = fma32(y, x, LOG_P3);
  y = fma32(y, x, LOG_P4);
  y = fma32(y, x, LOG_P5);
  y = fma32(y, x, LOG_P6);
  y = fma32(y, x, LOG_P7);
  y = fma32(y, x, LOG_P8);
  y = fr(y * x);
  y = fma32(y, z, fr(e * LOG_Q1)); // fused: y*z + e*q1
  y = fr(y - z * 0.5); // z * 0.5 is exact, so fused or not is the same
  x = fr(x + y);
  const logU1 = fr(x + e * LOG_Q2); // e * LOG_Q2 is exact (|e| <= 24, Q2 has 9 bits)
  return fr(Math.sqrt(-2 * logU1)); // -2 * logU1 is exact
}

/** sincos256_ps(2 pi u2), then the two outputs radius * cos and radius * sin. */
function sinCosFused(out: Float32Array, o: number, radius: number, u2: number): void {
  const theta = fr(TWO_PI_F * u2); // in [0, 2 pi): no sign handling needed
  let j = fr(theta * FOPI) | 0; // truncation, as _mm256_cvttps_epi32
  j = (j + 1) & ~1;
  let t = fma32(j, MINUS_DP1, theta); // fused: x + y*DP
  t = fma32(j, MINUS_DP2, t);
  t = fma32(j, MINUS_DP3, t);
  const tz = fr(t * t);
  let yc = fma32(COSCOF_P0, tz, COSCOF_P1); // fused
  yc = fma32(yc, tz, COSCOF_P2);
  yc = fr(yc * tz);
  yc = fma32(yc, tz, -(tz * 0.5)); // fused: y*z - z*0.5
  yc = fr(yc + 1);
  let ys = fma32(SINCOF_P0, tz, SINCOF_P1); // fused
  ys = fma32(ys, tz, SINCOF_P2);
  ys = fr(ys * tz);
  ys = fma32(ys, t, t); // fused: y2*x + x
  store(out, o, radius, ys, yc, j);
}

function boxMuller16Plain(k: Int32Array, out: Float32Array, at: number): void {
  for (let i = 0; i < 8; i++) {
    const n = 0x1000000 - k[i];
    const u2 = k[i + 8] * TWO_POW_M24;

    const b = 31 - Math.clz32(n);
    let x = n * INV_POW2[b];
    let e = b - 23;
    if (x < SQRTHF) {
      e -= 1;
      x = x + x - 1;
    } else {
      x = x - 1;
    }
    const z = fr(x * x);
    let y = fr(fr(LOG_P0 * x) + LOG_P1);
    y = fr(fr(y * x) + LOG_P2);
    y = fr(fr(y * x) + LOG_P3);
    y = fr(fr(y * x) + LOG_P4);
    y = fr(fr(y * x) + LOG_P5);
    y = fr(fr(y * x) + LOG_P6);
    y = fr(fr(y * x) + LOG_P7);
    y = fr(fr(y * x) + LOG_P8);
    y = fr(y * x);
    y = fr(fr(y * z) + fr(e * LOG_Q1));
    y = fr(y - z * 0.5);
    x = fr(x + y);
    const logU1 = fr(x + e * LOG_Q2);
    const radius = fr(Math.sqrt(-2 * logU1));

    const theta = fr(TWO_PI_F * u2);
    let j = fr(theta * FOPI) | 0;
    j = (j + 1) & ~1;
    let t = fr(theta + fr(j * MINUS_DP1));
    t = fr(t + fr(j * MINUS_DP2));
    t = fr(t + fr(j * MINUS_DP3));
    const tz = fr(t * t);
    let yc = fr(fr(COSCOF_P0 * tz) + COSCOF_P1);
    yc = fr(fr(yc * tz) + COSCOF_P2);
    yc = fr(yc * tz);
    yc = fr(fr(yc * tz) - tz * 0.5);
    yc = fr(yc + 1);
    let ys = fr(fr(SINCOF_P0 * tz) + SINCOF_P1);
    ys = fr(fr(ys * tz) + SINCOF_P2);
    ys = fr(ys * tz);
    ys = fr(fr(ys * t) + t);
    store(out, at + i, radius, ys, yc, j);
  }
}

/**
 * Selects sin/cos from the two polynomials by octant j, applies the octant
 * signs, and stores fmadd(radius * trig, std = 1, mean = 0) at `o` and `o + 8`.
 */
function store(out: Float32Array, o: number, radius: number, ys: number, yc: number, j: number): void {
  // The "+ 0" mirrors the masked adds of sincos256_ps and the final fmadd
  // with mean 0, which turn -0 into +0.
  let sin: number;
  let cos: number;
  if ((j & 2) === 0) {
    sin = ys + 0;
    cos = yc + 0;
  } else {
    sin = yc + 0;
    cos = ys + 0;
  }
  if (j & 4) sin = -sin;
  if (((j - 2) & 4) === 0) cos = -cos;
  out[o] = fr(radius * cos) + 0;
  out[o + 8] = fr(radius * sin) + 0;
}
