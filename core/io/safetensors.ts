/**
 * Safetensors reader and writer.
 *
 * Layout: u64 little-endian header length N, N bytes of UTF-8 JSON, then raw
 * little-endian tensor bytes; `data_offsets` are relative to the end of the
 * header. Checkpoints can be several GiB, so the reader only ever reads the
 * header and then the byte range of the tensor asked for, and it reports
 * absolute file offsets so ONNX external data can point straight at them.
 *
 * Tensor bytes are handed to typed arrays as they are, which assumes a
 * little-endian host: every platform Node and onnxruntime ship for is one.
 */
import { closeSync, fstatSync, fsyncSync, openSync, readSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { FileFormatError } from '../errors.ts';

export type Dtype =
  | 'F64' | 'F32' | 'F16' | 'BF16'
  | 'I64' | 'I32' | 'I16' | 'I8'
  | 'U64' | 'U32' | 'U16' | 'U8'
  | 'BOOL' | 'F8_E4M3' | 'F8_E5M2';

export type TensorArray =
  | Float64Array | Float32Array | Uint16Array | Int16Array | Int32Array | Uint32Array
  | BigInt64Array | BigUint64Array | Int8Array | Uint8Array;

/** Byte size and natural JS view per dtype. F16/BF16/F8 come back as raw bits. */
const DTYPES: Record<Dtype, { size: number; view: (b: ArrayBuffer) => TensorArray }> = {
  F64: { size: 8, view: (b) => new Float64Array(b) },
  F32: { size: 4, view: (b) => new Float32Array(b) },
  F16: { size: 2, view: (b) => new Uint16Array(b) },
  BF16: { size: 2, view: (b) => new Uint16Array(b) },
  I64: { size: 8, view: (b) => new BigInt64Array(b) },
  I32: { size: 4, view: (b) => new Int32Array(b) },
  I16: { size: 2, view: (b) => new Int16Array(b) },
  I8: { size: 1, view: (b) => new Int8Array(b) },
  U64: { size: 8, view: (b) => new BigUint64Array(b) },
  U32: { size: 4, view: (b) => new Uint32Array(b) },
  U16: { size: 2, view: (b) => new Uint16Array(b) },
  U8: { size: 1, view: (b) => new Uint8Array(b) },
  BOOL: { size: 1, view: (b) => new Uint8Array(b) },
  F8_E4M3: { size: 1, view: (b) => new Uint8Array(b) },
  F8_E5M2: { size: 1, view: (b) => new Uint8Array(b) },
};

export function isDtype(x: unknown): x is Dtype {
  return typeof x === 'string' && Object.hasOwn(DTYPES, x);
}

export function dtypeSize(dtype: Dtype): number {
  return DTYPES[dtype].size;
}

export interface TensorInfo {
  readonly name: string;
  readonly dtype: Dtype;
  readonly shape: readonly number[];
  /** Absolute offset in the file (not relative to the data section). */
  readonly byteOffset: number;
  readonly byteLength: number;
}

/** Same limit as the reference implementation: a bigger header is hostile, not a model. */
const MAX_HEADER_BYTES = 100_000_000;
/** Single read/write calls stay under the ~2 GiB per-call limit of read(2)/write(2). */
const IO_CHUNK = 1 << 30;

const CORRUPT = 'the file is corrupt or not a safetensors file; re-download or re-export it';
const TRUNCATED = 'the file is truncated or not a safetensors file; re-download it';

export class SafetensorsFile {
  /** Tensors in file order (ascending offset). */
  readonly tensors: ReadonlyMap<string, TensorInfo>;
  readonly metadata: Readonly<Record<string, string>>;
  readonly headerByteLength: number;
  /** Absolute offset of the data section: 8 + headerByteLength. */
  readonly dataStart: number;
  readonly fileSize: number;
  private fd: number | null;

  /** Use `openSafetensors`. Takes ownership of `fd`. */
  constructor(readonly path: string, fd: number) {
    this.fd = fd;
    const h = parseHeader(path, fd);
    this.tensors = h.tensors;
    this.metadata = h.metadata;
    this.headerByteLength = h.headerByteLength;
    this.dataStart = 8 + h.headerByteLength;
    this.fileSize = h.fileSize;
  }

  /** The tensor's entry; unknown names throw with the closest existing names. */
  info(name: string): TensorInfo {
    const t = this.tensors.get(name);
    if (t) return t;
    const near = closestNames(name, [...this.tensors.keys()], 3);
    const hint = near.length ? `; closest names: ${near.map((n) => `"${n}"`).join(', ')}` : '; the file holds no tensors';
    throw new FileFormatError(this.path, `${this.path}: no tensor named "${name}"${hint}. Check the name or that this is the right checkpoint`);
  }

  /** The tensor's raw bytes, copied into a fresh (hence aligned) buffer. */
  readBytes(name: string): Uint8Array {
    return new Uint8Array(this.readBuffer(this.info(name)));
  }

  /** The tensor as its natural typed array (F16/BF16 as raw Uint16 bits). */
  read(name: string): TensorArray {
    const t = this.info(name);
    return DTYPES[t.dtype].view(this.readBuffer(t));
  }

  /** Float tensors (F16, BF16, F32, F64) widened or narrowed to Float32Array. */
  readAsFloat32(name: string): Float32Array {
    const t = this.info(name);
    const buf = this.readBuffer(t);
    switch (t.dtype) {
      case 'F32': return new Float32Array(buf);
      case 'F16': return f16ToF32(new Uint16Array(buf));
      case 'BF16': return bf16ToF32(new Uint16Array(buf));
      case 'F64': return Float32Array.from(new Float64Array(buf));
      default:
        throw new FileFormatError(this.path, `${this.path}: tensor "${name}" is ${t.dtype}, not a float type; read it with read() instead of readAsFloat32()`);
    }
  }

  close(): void {
    if (this.fd !== null) closeSync(this.fd);
    this.fd = null;
  }

  private readBuffer(t: TensorInfo): ArrayBuffer {
    if (this.fd === null) throw new Error(`${this.path}: read("${t.name}") after close()`);
    const buf = new ArrayBuffer(t.byteLength);
    readFully(this.path, this.fd, new Uint8Array(buf), t.byteOffset, `tensor "${t.name}"`);
    return buf;
  }
}

/** Opens a safetensors file and validates its header; tensor data is read on demand. */
export function openSafetensors(path: string): SafetensorsFile {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code ?? String(e);
    throw new FileFormatError(path, `${path}: cannot open (${code}); check that the file exists and is readable`, { cause: e });
  }
  try {
    return new SafetensorsFile(path, fd);
  } catch (e) {
    closeSync(fd);
    throw e;
  }
}

function readFully(path: string, fd: number, into: Uint8Array, position: number, what: string): void {
  let done = 0;
  while (done < into.length) {
    const n = readSync(fd, into, done, Math.min(IO_CHUNK, into.length - done), position + done);
    // Validation proved the range exists, so a short read means the file changed under us.
    if (n === 0) throw new FileFormatError(path, `${path}: ${what} ends past the end of the file; ${TRUNCATED}`);
    done += n;
  }
}

interface ParsedHeader {
  tensors: Map<string, TensorInfo>;
  metadata: Record<string, string>;
  headerByteLength: number;
  fileSize: number;
}

function parseHeader(path: string, fd: number): ParsedHeader {
  const fail = (detail: string, fix = CORRUPT): never => {
    throw new FileFormatError(path, `${path}: ${detail}; ${fix}`);
  };

  const fileSize = fstatSync(fd).size;
  if (fileSize < 8) fail(`the file is ${fileSize} bytes, too short for the 8-byte header length`, TRUNCATED);
  const lenBuf = Buffer.alloc(8);
  readFully(path, fd, lenBuf, 0, 'the header length');
  const declared = lenBuf.readBigUInt64LE(0);
  if (declared > BigInt(MAX_HEADER_BYTES)) fail(`the header claims ${declared} bytes, more than the ${MAX_HEADER_BYTES}-byte limit`);
  const headerByteLength = Number(declared);
  if (headerByteLength > fileSize - 8) {
    fail(`the header claims ${headerByteLength} bytes but only ${fileSize - 8} follow the length field`, TRUNCATED);
  }

  const raw = Buffer.alloc(headerByteLength);
  readFully(path, fd, raw, 8, 'the header');
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(raw);
  } catch {
    return fail('the header is not valid UTF-8');
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    return fail(`the header is not valid JSON (${(e as Error).message})`);
  }
  if (!isPlainObject(json)) fail(`the header is JSON ${describe(json)}, not an object`);

  const dataLength = fileSize - 8 - headerByteLength;
  let metadata: Record<string, string> = {};
  const list: TensorInfo[] = [];
  for (const [name, entry] of Object.entries(json as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (!isPlainObject(entry)) fail(`"__metadata__" is ${describe(entry)}, not an object of strings`);
      for (const [k, v] of Object.entries(entry as Record<string, unknown>)) {
        if (typeof v !== 'string') fail(`"__metadata__" key "${k}" is ${describe(v)}, not a string`);
      }
      metadata = Object.freeze(Object.fromEntries(Object.entries(entry as Record<string, string>)));
      continue;
    }
    const bad = (detail: string, fix = CORRUPT): never => fail(`tensor "${name}": ${detail}`, fix);
    if (!isPlainObject(entry)) bad(`entry is ${describe(entry)}, not an object`);
    const { dtype, shape, data_offsets: offsets } = entry as Record<string, unknown>;
    if (!isDtype(dtype)) bad(`unknown dtype ${JSON.stringify(dtype)} (known: ${Object.keys(DTYPES).join(', ')})`, 'the file may come from a newer tool; re-export it with a supported dtype');
    if (!Array.isArray(shape) || !shape.every(isCount)) bad(`shape ${JSON.stringify(shape)} is not a list of non-negative integers`);
    if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isCount)) {
      bad(`data_offsets ${JSON.stringify(offsets)} is not a pair of non-negative integers`);
    }
    const [begin, end] = offsets as [number, number];
    if (begin > end) bad(`data_offsets [${begin}, ${end}] begin after they end`);
    // BigInt: a hostile shape can overflow doubles and sneak past a Number comparison.
    const expected = (shape as number[]).reduce((p, d) => p * BigInt(d), BigInt(DTYPES[dtype as Dtype].size));
    if (BigInt(end - begin) !== expected) {
      bad(`data_offsets [${begin}, ${end}] span ${end - begin} bytes but ${dtype} [${(shape as number[]).join(', ')}] needs ${expected}`);
    }
    if (end > dataLength) bad(`data ends at byte ${end} of the data section, but the section is only ${dataLength} bytes`, TRUNCATED);
    list.push({ name, dtype: dtype as Dtype, shape: Object.freeze([...(shape as number[])]), byteOffset: 8 + headerByteLength + begin, byteLength: end - begin });
  }

  // Overlapping tensors would alias each other's bytes: sort by offset and require disjoint ranges.
  list.sort((a, b) => a.byteOffset - b.byteOffset || a.byteLength - b.byteLength);
  for (let i = 1; i < list.length; i++) {
    const prev = list[i - 1], cur = list[i];
    if (cur.byteOffset < prev.byteOffset + prev.byteLength) {
      fail(`tensors "${prev.name}" and "${cur.name}" overlap`);
    }
  }
  return { tensors: new Map(list.map((t) => [t.name, Object.freeze(t)])), metadata, headerByteLength, fileSize };
}

function isPlainObject(x: unknown): x is Record<string, unknown> {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

function isCount(x: unknown): x is number {
  return typeof x === 'number' && Number.isSafeInteger(x) && x >= 0;
}

function describe(x: unknown): string {
  if (Array.isArray(x)) return 'an array';
  if (x === null) return 'null';
  return `a ${typeof x}`;
}

/** Up to `n` names nearest to `name` by edit distance, for "did you mean" hints. */
function closestNames(name: string, names: string[], n: number): string[] {
  return names
    .map((c) => ({ c, d: editDistance(name, c) }))
    .sort((a, b) => a.d - b.d)
    .slice(0, n)
    .map((x) => x.c);
}

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = cur;
  }
  return prev[b.length];
}

// ---------------------------------------------------------------- writer

export interface TensorToWrite {
  readonly dtype: Dtype;
  readonly shape: readonly number[];
  readonly data: ArrayBufferView;
}

/**
 * Writes a safetensors file atomically: a temp file beside the target is
 * written tensor by tensor, fsynced and renamed over `path`, so readers see
 * either the old file or the complete new one. On error the temp file is
 * removed and `path` is left untouched.
 */
export function writeSafetensors(
  path: string,
  tensors: Record<string, TensorToWrite> | Iterable<readonly [string, TensorToWrite]>,
  metadata?: Record<string, string>,
): void {
  const entries = Symbol.iterator in tensors
    ? [...(tensors as Iterable<readonly [string, TensorToWrite]>)]
    : Object.entries(tensors as Record<string, TensorToWrite>);

  // Validate everything before touching the disk.
  const header: [string, unknown][] = [];
  if (metadata !== undefined) {
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== 'string') throw new TypeError(`safetensors metadata "${k}" must be a string, got ${describe(v)}`);
    }
    header.push(['__metadata__', metadata]);
  }
  const seen = new Set<string>();
  let offset = 0;
  const plan = entries.map(([name, t]) => {
    if (name === '__metadata__' || seen.has(name)) throw new TypeError(`tensor name "${name}" is reserved or repeated`);
    seen.add(name);
    if (!isDtype(t.dtype)) throw new TypeError(`tensor "${name}": unknown dtype ${JSON.stringify(t.dtype)}`);
    if (!Array.isArray(t.shape) || !t.shape.every(isCount)) throw new TypeError(`tensor "${name}": shape ${JSON.stringify(t.shape)} is not a list of non-negative integers`);
    const byteLength = t.shape.reduce((p, d) => p * d, DTYPES[t.dtype].size);
    checkLength(name, t.dtype, t.shape, t.data, byteLength);
    header.push([name, { dtype: t.dtype, shape: t.shape, data_offsets: [offset, offset + byteLength] }]);
    offset += byteLength;
    return { name, t, byteLength };
  });

  // fromEntries, not assignment: a tensor named "__proto__" must stay a key.
  let json = JSON.stringify(Object.fromEntries(header));
  // Pad with spaces (as the reference writer does) so data starts 8-byte aligned.
  json += ' '.repeat((8 - ((8 + Buffer.byteLength(json)) % 8)) % 8);
  const head = Buffer.alloc(8 + Buffer.byteLength(json));
  head.writeBigUInt64LE(BigInt(head.length - 8), 0);
  head.write(json, 8, 'utf8');

  const tmp = `${path}.tmp-${process.pid}-${randomBytes(6).toString('hex')}`;
  let fd: number | null = null;
  try {
    fd = openSync(tmp, 'wx');
    writeFully(fd, head);
    for (const { name, t, byteLength } of plan) {
      // Read `data` again and re-check: a view over a resizable or transferred
      // buffer can change length after validation, and the header is already out.
      const data = t.data;
      checkLength(name, t.dtype, t.shape, data, byteLength);
      writeFully(fd, new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    }
    fsyncSync(fd);
    closeSync(fd);
    fd = null;
    renameSync(tmp, path);
  } catch (e) {
    if (fd !== null) closeSync(fd);
    try {
      unlinkSync(tmp);
    } catch {
      // The temp file may never have been created (e.g. missing directory).
    }
    throw e;
  }
}

function checkLength(name: string, dtype: Dtype, shape: readonly number[], data: ArrayBufferView, byteLength: number): void {
  if (data.byteLength !== byteLength) {
    throw new RangeError(`tensor "${name}": ${dtype} [${shape.join(', ')}] needs ${byteLength} bytes but data has ${data.byteLength}`);
  }
}

function writeFully(fd: number, bytes: Uint8Array): void {
  for (let done = 0; done < bytes.length;) {
    done += writeSync(fd, bytes, done, Math.min(IO_CHUNK, bytes.length - done));
  }
}

// ---------------------------------------------------------------- half floats

const f32 = new Float32Array(1);
const u32 = new Uint32Array(f32.buffer);

/** IEEE half to single for all 65536 bit patterns, built on first use. */
let halfTable: Uint32Array | null = null;

function halfBits(h: number): number {
  const sign = (h & 0x8000) << 16;
  const exp = (h >> 10) & 0x1f;
  const mant = h & 0x3ff;
  if (exp === 0x1f) return sign | 0x7f800000 | (mant << 13); // inf, or NaN with its payload
  if (exp !== 0) return sign | ((exp + 112) << 23) | (mant << 13); // rebias 15 -> 127
  // Zero or subnormal: mant * 2^-24 is exact in f32.
  f32[0] = mant * 2 ** -24;
  return sign | u32[0];
}

export function f16ToF32(src: Uint16Array): Float32Array {
  if (!halfTable) {
    halfTable = new Uint32Array(65536);
    for (let h = 0; h < 65536; h++) halfTable[h] = halfBits(h) >>> 0;
  }
  const out = new Uint32Array(src.length);
  for (let i = 0; i < src.length; i++) out[i] = halfTable[src[i]];
  return new Float32Array(out.buffer);
}

/** bfloat16 is the top half of an f32, so widening is a shift. */
export function bf16ToF32(src: Uint16Array): Float32Array {
  const out = new Uint32Array(src.length);
  for (let i = 0; i < src.length; i++) out[i] = src[i] << 16;
  return new Float32Array(out.buffer);
}

/** Single to IEEE half with round-to-nearest-even; overflow gives inf, NaN stays NaN. */
export function f32ToF16(src: Float32Array): Uint16Array {
  const out = new Uint16Array(src.length);
  for (let i = 0; i < src.length; i++) {
    f32[0] = src[i];
    out[i] = f32BitsToF16(u32[0]);
  }
  return out;
}

function f32BitsToF16(x: number): number {
  const sign = (x >>> 16) & 0x8000;
  const exp = (x >>> 23) & 0xff;
  const mant = x & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 | (mant >>> 13) : 0); // keep NaN quiet
  const e = exp - 127 + 15;
  if (e >= 0x1f) return sign | 0x7c00;
  if (e <= 0) {
    // Subnormal half: value / 2^-24 = (mant | implicit 1) >> (14 - e), rounded.
    if (e < -10) return sign; // below half the smallest subnormal: rounds to zero
    return sign | roundShift(mant | 0x800000, 14 - e);
  }
  // A carry out of the mantissa bumps the exponent, and from 30 lands on inf: both correct.
  return sign | roundShift((e << 23) | mant, 13);
}

/** `v >> s` rounded to nearest, ties to even. */
function roundShift(v: number, s: number): number {
  const r = v >>> s;
  const rem = v & ((1 << s) - 1);
  const half = 1 << (s - 1);
  return rem > half || (rem === half && (r & 1)) ? r + 1 : r;
}
