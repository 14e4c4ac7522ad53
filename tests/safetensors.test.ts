import { describe, expect, it, beforeAll, afterAll } from 'vitest';
import { closeSync, copyFileSync, mkdtempSync, openSync, readdirSync, readFileSync, readSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { randomBytes, randomFillSync } from 'node:crypto';
import os from 'node:os';
import path from 'node:path';
import { FileFormatError } from '../core/errors.ts';
import {
  bf16ToF32, dtypeSize, f16ToF32, f32ToF16, openSafetensors, writeSafetensors,
  type Dtype, type TensorToWrite,
} from '../core/io/safetensors.ts';
import { FIXTURES_DIR, hasShared } from './helpers/shared.ts';

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(path.join(os.tmpdir(), 'lethe-safetensors-'));
});
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let counter = 0;
const fresh = (stem = 'f') => path.join(dir, `${stem}-${counter++}.safetensors`);

/** Hand-assembles a file: u64 length (overridable), header text, data bytes. */
function rawFile(header: unknown, data: Buffer = Buffer.alloc(0), declaredLength?: bigint): string {
  const text = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header), 'utf8');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(declaredLength ?? BigInt(text.length));
  const p = fresh('raw');
  writeFileSync(p, Buffer.concat([len, text, data]));
  return p;
}

/** Parses the header with nothing but fs and JSON.parse: the independent expectation. */
function rawHeader(p: string): { n: number; json: Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }> } {
  const fd = openSync(p, 'r');
  try {
    const len = Buffer.alloc(8);
    readSync(fd, len, 0, 8, 0);
    const n = Number(len.readBigUInt64LE());
    const text = Buffer.alloc(n);
    readSync(fd, text, 0, n, 8);
    return { n, json: JSON.parse(text.toString('utf8')) };
  } finally {
    closeSync(fd);
  }
}

function rawRead(p: string, offset: number, length: number): Buffer {
  const fd = openSync(p, 'r');
  try {
    const b = Buffer.alloc(length);
    expect(readSync(fd, b, 0, length, offset)).toBe(length);
    return b;
  } finally {
    closeSync(fd);
  }
}

const bytesOf = (v: ArrayBufferView) => Buffer.from(v.buffer, v.byteOffset, v.byteLength);

function refused(p: string, ...patterns: RegExp[]): string {
  let err: unknown;
  try {
    openSafetensors(p).close();
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(FileFormatError);
  const e = err as FileFormatError;
  expect(e.code).toBe('file-format');
  expect(e.path).toBe(p);
  expect(e.message).toContain(p);
  for (const re of patterns) expect(e.message).toMatch(re);
  return e.message;
}

const ALL_DTYPES: Dtype[] = ['F64', 'F32', 'F16', 'BF16', 'I64', 'I32', 'I16', 'I8', 'U64', 'U32', 'U16', 'U8', 'BOOL', 'F8_E4M3', 'F8_E5M2'];
const EXPECTED_SIZE: Record<Dtype, number> = {
  F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4, I16: 2, I8: 1, U64: 8, U32: 4, U16: 2, U8: 1, BOOL: 1, F8_E4M3: 1, F8_E5M2: 1,
};
const EXPECTED_CTOR: Record<Dtype, string> = {
  F64: 'Float64Array', F32: 'Float32Array', F16: 'Uint16Array', BF16: 'Uint16Array', I64: 'BigInt64Array', I32: 'Int32Array',
  I16: 'Int16Array', I8: 'Int8Array', U64: 'BigUint64Array', U32: 'Uint32Array', U16: 'Uint16Array', U8: 'Uint8Array',
  BOOL: 'Uint8Array', F8_E4M3: 'Uint8Array', F8_E5M2: 'Uint8Array',
};

describe('round trip', () => {
  it('writes and reads back every dtype, with metadata, 8-byte aligned data', () => {
    const p = fresh();
    const tensors: Record<string, TensorToWrite & { bytes: Buffer }> = {};
    const shapes = [[3, 5], [7], [], [2, 0, 4], [1, 3, 1]];
    ALL_DTYPES.forEach((dtype, i) => {
      const shape = shapes[i % shapes.length];
      const count = shape.reduce((a, b) => a * b, 1);
      const bytes = randomBytes(count * EXPECTED_SIZE[dtype]);
      if (dtype === 'BOOL') bytes.forEach((b, j) => (bytes[j] = b & 1));
      // Offset the view inside a larger buffer so the writer must honour byteOffset.
      const backing = Buffer.concat([randomBytes(3), bytes, randomBytes(5)]);
      const data = new Uint8Array(backing.buffer, backing.byteOffset + 3, bytes.length);
      tensors[`t.${dtype}`] = { dtype, shape, data, bytes };
    });
    const metadata = { format: 'pt', note: 'héllo ✓ "quoted"' };
    writeSafetensors(p, tensors, metadata);

    const { n, json } = rawHeader(p);
    expect((8 + n) % 8).toBe(0);
    expect(readFileSync(p).subarray(8, 8 + n).toString('utf8')).toMatch(/^\{.*\} *$/);

    const f = openSafetensors(p);
    try {
      expect(f.headerByteLength).toBe(n);
      expect(f.dataStart).toBe(8 + n);
      expect(f.metadata).toEqual(metadata);
      expect(json.__metadata__).toEqual(metadata);
      expect([...f.tensors.keys()].sort()).toEqual(Object.keys(tensors).sort());
      for (const [name, t] of Object.entries(tensors)) {
        const info = f.tensors.get(name)!;
        expect(info.dtype).toBe(t.dtype);
        expect(info.shape).toEqual(t.shape);
        expect(info.byteLength).toBe(t.bytes.length);
        expect(info.byteOffset).toBe(8 + n + json[name].data_offsets[0]);
        expect(rawRead(p, info.byteOffset, info.byteLength).equals(t.bytes)).toBe(true);
        const arr = f.read(name);
        expect(arr.constructor.name).toBe(EXPECTED_CTOR[t.dtype]);
        expect(arr.byteOffset % EXPECTED_SIZE[t.dtype]).toBe(0);
        expect(bytesOf(arr).equals(t.bytes)).toBe(true);
        expect(Buffer.from(f.readBytes(name)).equals(t.bytes)).toBe(true);
        expect(dtypeSize(t.dtype)).toBe(EXPECTED_SIZE[t.dtype]);
      }
    } finally {
      f.close();
    }
  });

  it('accepts a Map, keeps values exact, and converts floats with readAsFloat32', () => {
    const p = fresh();
    const f32 = new Float32Array([1.5, -0, Infinity, 3.4028234663852886e38, 1e-45]);
    const f64 = new Float64Array([0.1, -2, 1e300]);
    const i64 = new BigInt64Array([-(2n ** 63n), 2n ** 63n - 1n, 0n]);
    const f16 = new Uint16Array([0x3c00, 0xc000, 0x0001, 0x7c00]);
    const bf16 = new Uint16Array([0x3f80, 0xc000, 0x7f80]);
    writeSafetensors(p, new Map<string, TensorToWrite>([
      ['f32', { dtype: 'F32', shape: [5], data: f32 }],
      ['f64', { dtype: 'F64', shape: [3], data: f64 }],
      ['i64', { dtype: 'I64', shape: [3], data: i64 }],
      ['f16', { dtype: 'F16', shape: [2, 2], data: f16 }],
      ['bf16', { dtype: 'BF16', shape: [3], data: bf16 }],
    ]));
    const f = openSafetensors(p);
    try {
      expect(Array.from(f.read('f32') as Float32Array)).toEqual(Array.from(f32));
      expect(Object.is((f.read('f32') as Float32Array)[1], -0)).toBe(true);
      expect(Array.from(f.read('i64') as BigInt64Array)).toEqual([-(2n ** 63n), 2n ** 63n - 1n, 0n]);
      expect(Array.from(f.readAsFloat32('f16'))).toEqual([1, -2, 2 ** -24, Infinity]);
      expect(Array.from(f.readAsFloat32('bf16'))).toEqual([1, -2, Infinity]);
      expect(Array.from(f.readAsFloat32('f64'))).toEqual([Math.fround(0.1), -2, Infinity]);
      expect(() => f.readAsFloat32('i64')).toThrow(/I64.*read\(\)/);
      expect(Object.keys(f.metadata)).toEqual([]);
    } finally {
      f.close();
    }
  });

  it('names close matches for an unknown tensor', () => {
    const p = fresh();
    const z = (n: number) => ({ dtype: 'F32' as const, shape: [n], data: new Float32Array(n) });
    writeSafetensors(p, { 'down.0.weight': z(1), 'down.0.bias': z(2), 'mid.attn.q.weight': z(3), 'up.1.weight': z(1) });
    const f = openSafetensors(p);
    try {
      expect(() => f.read('down.0.wieght')).toThrow(FileFormatError);
      expect(() => f.read('down.0.wieght')).toThrow(/no tensor named "down\.0\.wieght".*"down\.0\.weight"/);
    } finally {
      f.close();
    }
    expect(() => f.read('down.0.weight')).toThrow(/after close/);
  });
});

describe.skipIf(!hasShared)('reference files', () => {
  const weights = path.join(FIXTURES_DIR, 'sd1', 'clip-text', 'weights.safetensors');

  it('parses the CLIP text weights and reads at absolute offsets', () => {
    const { n, json } = rawHeader(weights);
    const f = openSafetensors(weights);
    try {
      const names = Object.keys(json).filter((k) => k !== '__metadata__');
      expect(names.length).toBeGreaterThan(0);
      expect([...f.tensors.keys()].sort()).toEqual(names.sort());
      for (const name of names) {
        const t = f.tensors.get(name)!;
        expect(t.dtype).toBe(json[name].dtype);
        expect(t.shape).toEqual(json[name].shape);
        expect(t.byteOffset).toBe(8 + n + json[name].data_offsets[0]);
        expect(t.byteLength).toBe(json[name].data_offsets[1] - json[name].data_offsets[0]);
      }
      const name = 'text_model.embeddings.token_embedding.weight';
      const t = f.tensors.get(name)!;
      expect(t.dtype).toBe('F32');
      expect(t.shape).toEqual([1000, 32]);
      expect(t.byteLength).toBe(1000 * 32 * 4);
      const arr = f.read(name);
      expect(arr).toBeInstanceOf(Float32Array);
      expect(arr.length).toBe(32000);
      expect(bytesOf(arr).equals(rawRead(weights, t.byteOffset, t.byteLength))).toBe(true);
      expect(Array.from(f.readAsFloat32(name))).toEqual(Array.from(arr as Float32Array));
    } finally {
      f.close();
    }
  });

  it('parses the other fixture files in the directory', () => {
    const dirPath = path.join(FIXTURES_DIR, 'sd1', 'clip-text');
    for (const file of readdirSync(dirPath).filter((x) => x.endsWith('.safetensors'))) {
      const p = path.join(dirPath, file);
      const { json } = rawHeader(p);
      const f = openSafetensors(p);
      try {
        expect(f.tensors.size).toBe(Object.keys(json).filter((k) => k !== '__metadata__').length);
      } finally {
        f.close();
      }
    }
  });

  it('refuses a truncated copy of a real file', () => {
    const p = fresh('cut');
    copyFileSync(weights, p);
    const size = statSync(p).size;
    truncateSync(p, size - 100);
    refused(p, /tensor "/, /truncated/, /re-download/);
    truncateSync(p, 200); // cut inside the header
    refused(p, /header claims \d+ bytes/, /truncated/);
  });
});

describe('hostile or corrupt files', () => {
  const ok = { a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } };
  const eight = Buffer.alloc(8);

  it('refuses an empty file and one shorter than 8 bytes', () => {
    const empty = fresh('empty');
    writeFileSync(empty, Buffer.alloc(0));
    refused(empty, /0 bytes/, /truncated/);
    const short = fresh('short');
    writeFileSync(short, Buffer.from([1, 2, 3]));
    refused(short, /3 bytes/, /truncated/);
  });

  it('refuses header lengths beyond the file or absurdly large', () => {
    refused(rawFile(ok, eight, 1000n), /header claims 1000 bytes/, /truncated/);
    refused(rawFile(ok, eight, 2n ** 60n), /header claims 1152921504606846976 bytes/, /limit/);
  });

  it('refuses headers that are not a JSON object', () => {
    refused(rawFile('{"a": {"dtype": "F32",', eight), /not valid JSON/);
    refused(rawFile('not json at all', eight), /not valid JSON/);
    refused(rawFile([1, 2, 3], eight), /array, not an object/);
    refused(rawFile('null', eight), /null, not an object/);
    const bad = fresh('utf8');
    const hdr = Buffer.from([0x7b, 0x22, 0xff, 0x22, 0x3a, 0x31, 0x7d]); // {"\xff":1}
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(hdr.length));
    writeFileSync(bad, Buffer.concat([len, hdr]));
    refused(bad, /not valid UTF-8/);
  });

  it('refuses bad entries, naming the tensor', () => {
    refused(rawFile({ w: { dtype: 'F33', shape: [2], data_offsets: [0, 8] } }, eight), /tensor "w"/, /unknown dtype "F33"/);
    refused(rawFile({ w: { dtype: 'F32', shape: [-2], data_offsets: [0, 8] } }, eight), /tensor "w"/, /shape \[-2\]/);
    refused(rawFile({ w: { dtype: 'F32', shape: [1.5], data_offsets: [0, 8] } }, eight), /tensor "w"/, /shape \[1\.5\]/);
    refused(rawFile({ w: { dtype: 'F32', shape: '2', data_offsets: [0, 8] } }, eight), /tensor "w"/, /shape "2"/);
    refused(rawFile({ w: { dtype: 'F32', shape: [3], data_offsets: [0, 8] } }, eight), /tensor "w"/, /span 8 bytes but F32 \[3\] needs 12/);
    refused(rawFile({ w: { dtype: 'F32', shape: [2 ** 40, 2 ** 40], data_offsets: [0, 8] } }, eight), /tensor "w"/, /needs/);
    refused(rawFile({ w: { dtype: 'F32', shape: [2], data_offsets: [8, 0] } }, eight), /tensor "w"/, /begin after/);
    refused(rawFile({ w: { dtype: 'F32', shape: [2], data_offsets: [0] } }, eight), /tensor "w"/, /data_offsets/);
    refused(rawFile({ w: 'F32' }, eight), /tensor "w"/, /not an object/);
  });

  it('refuses offsets past the end of the data', () => {
    refused(rawFile({ w: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } }, eight), /tensor "w"/, /only 8 bytes/, /truncated/);
  });

  it('refuses overlapping tensors', () => {
    const hdr = {
      a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] },
      b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] },
    };
    refused(rawFile(hdr, Buffer.alloc(12)), /"a" and "b" overlap/);
  });

  it('refuses non-string metadata', () => {
    refused(rawFile({ ...ok, __metadata__: { epochs: 3 } }, eight), /"__metadata__" key "epochs" is a number/);
    refused(rawFile({ ...ok, __metadata__: ['x'] }, eight), /"__metadata__" is an array/);
  });

  it('reports a missing file as FileFormatError', () => {
    refused(path.join(dir, 'nope.safetensors'), /ENOENT/);
  });

  it('accepts a hand-built valid file (sanity check for the builder)', () => {
    const data = Buffer.from(new Float32Array([1, 2]).buffer);
    const f = openSafetensors(rawFile(ok, data));
    try {
      expect(Array.from(f.read('a') as Float32Array)).toEqual([1, 2]);
    } finally {
      f.close();
    }
  });
});

describe('writer atomicity', () => {
  const tmpLeft = (d: string) => readdirSync(d).filter((x) => x.includes('.tmp-'));

  it('throws for a missing directory and leaves no temp file', () => {
    const sub = path.join(dir, 'atomic-missing');
    expect(() =>
      writeSafetensors(path.join(sub, 'x.safetensors'), { a: { dtype: 'F32', shape: [1], data: new Float32Array(1) } }),
    ).toThrow(/ENOENT/);
    expect(tmpLeft(dir)).toEqual([]);
  });

  it('a length mismatch found before writing leaves the old file intact', () => {
    const p = fresh('atomic');
    writeFileSync(p, 'previous contents');
    expect(() => writeSafetensors(p, { a: { dtype: 'F32', shape: [3], data: new Float32Array(2) } })).toThrow(/needs 12 bytes but data has 8/);
    expect(readFileSync(p, 'utf8')).toBe('previous contents');
    expect(tmpLeft(dir)).toEqual([]);
  });

  it('a failure mid-way through the data leaves the old file intact and no temp file', () => {
    const sub = mkdtempSync(path.join(dir, 'midway-'));
    const p = path.join(sub, 'model.safetensors');
    writeSafetensors(p, { a: { dtype: 'F32', shape: [1], data: new Float32Array([7]) } });
    const before = readFileSync(p);
    // `data` shrinks after validation, as a view over a resized buffer would:
    // the first tensor is already written when the second is found wrong.
    let reads = 0;
    const shrinking = {
      dtype: 'F32' as const,
      shape: [4],
      get data() {
        return ++reads === 1 ? new Float32Array(4) : new Float32Array(3);
      },
    };
    expect(() => writeSafetensors(p, { first: { dtype: 'U8', shape: [1000], data: new Uint8Array(1000) }, second: shrinking })).toThrow(
      /"second".*needs 16 bytes but data has 12/,
    );
    expect(reads).toBe(2);
    expect(readFileSync(p).equals(before)).toBe(true);
    expect(readdirSync(sub)).toEqual(['model.safetensors']);
  });

  it('replaces an existing file on success', () => {
    const p = fresh('replace');
    writeFileSync(p, 'old');
    writeSafetensors(p, { a: { dtype: 'I32', shape: [2], data: new Int32Array([5, -6]) } });
    const f = openSafetensors(p);
    try {
      expect(Array.from(f.read('a') as Int32Array)).toEqual([5, -6]);
    } finally {
      f.close();
    }
    expect(tmpLeft(dir)).toEqual([]);
  });
});

describe('half-float conversion', () => {
  /** Value of a half bit pattern from the IEEE definition, by arithmetic only. */
  function halfValue(h: number): number {
    const s = h & 0x8000 ? -1 : 1;
    const e = (h >> 10) & 0x1f;
    const m = h & 0x3ff;
    if (e === 0x1f) return m ? NaN : s * Infinity;
    if (e === 0) return s * m * 2 ** -24;
    return s * (1 + m / 1024) * 2 ** (e - 15);
  }

  it('encodes known bit patterns', () => {
    const cases: [number, number][] = [
      [1, 0x3c00], [-2, 0xc000], [65504, 0x7bff], [2 ** -24, 0x0001], [2 ** -14, 0x0400], [0, 0x0000], [-0, 0x8000],
      [Infinity, 0x7c00], [-Infinity, 0xfc00], [0.1, 0x2e66],
      [65519, 0x7bff], [65520, 0x7c00], [1e6, 0x7c00], // round up to inf only from halfway
      [1 + 2 ** -11, 0x3c00], [1 + 3 * 2 ** -11, 0x3c02], // ties go to even
      [2 ** -25, 0x0000], [2 ** -25 * 1.5, 0x0001], [3 * 2 ** -25, 0x0002], [1e-10, 0x0000], // subnormal rounding
      [2 ** -14 - 2 ** -25, 0x0400], // largest subnormal rounds up into the normals
    ];
    const got = f32ToF16(new Float32Array(cases.map((c) => c[0])));
    cases.forEach(([v, bits], i) => expect([v, got[i].toString(16)]).toEqual([v, bits.toString(16)]));
    const nan = f32ToF16(new Float32Array([NaN]))[0];
    expect(nan & 0x7c00).toBe(0x7c00);
    expect(nan & 0x3ff).not.toBe(0);
  });

  it('decodes all 65536 patterns to their IEEE values', () => {
    const all = new Uint16Array(65536).map((_, i) => i);
    const out = f16ToF32(all);
    for (let h = 0; h < 65536; h++) {
      const want = halfValue(h);
      if (Number.isNaN(want)) expect(Number.isNaN(out[h])).toBe(true);
      else if (!Object.is(out[h], want)) expect([h, out[h]]).toEqual([h, want]);
    }
  });

  it('round-trips every non-NaN half exactly', () => {
    const all = new Uint16Array(65536).map((_, i) => i);
    const back = f32ToF16(f16ToF32(all));
    for (let h = 0; h < 65536; h++) {
      if (Number.isNaN(halfValue(h))) expect(Number.isNaN(halfValue(back[h]))).toBe(true);
      else if (back[h] !== h) expect(back[h]).toBe(h);
    }
  });

  it('rounds random floats to the nearest half, ties to even (brute-force reference)', () => {
    // Finite halves are sorted by bit pattern; the reference picks the nearest by binary search.
    const nearest = (x: number): number => {
      const a = Math.abs(x);
      if (a >= 65520) return 0x7c00; // 65504 + half an ulp (16) and above overflow
      let lo = 0, hi = 0x7bff;
      while (hi - lo > 1) {
        const mid = (lo + hi) >> 1;
        if (halfValue(mid) <= a) lo = mid;
        else hi = mid;
      }
      const dl = a - halfValue(lo), dh = halfValue(hi) - a;
      const h = dl < dh ? lo : dh < dl ? hi : lo % 2 === 0 ? lo : hi;
      return (x < 0 || Object.is(x, -0) ? 0x8000 : 0) | h;
    };
    const n = 20000;
    const xs = new Float32Array(n);
    const rnd = randomFillSync(new Uint32Array(n));
    for (let i = 0; i < n; i++) {
      // Spread magnitudes over the whole half range, subnormals included.
      const mag = 2 ** (((rnd[i] % 4000) / 100) - 26) * (1 + (rnd[i] >>> 12) / 2 ** 20);
      xs[i] = rnd[i] & 1 ? -mag : mag;
    }
    const got = f32ToF16(xs);
    for (let i = 0; i < n; i++) {
      const want = nearest(xs[i]);
      if (got[i] !== want) expect([xs[i], got[i]]).toEqual([xs[i], want]);
    }
  });

  it('widens bfloat16 by bit position', () => {
    const out = bf16ToF32(new Uint16Array([0x3f80, 0xc000, 0x7f80, 0xff80, 0x0001, 0x4049]));
    expect(Array.from(out.subarray(0, 4))).toEqual([1, -2, Infinity, -Infinity]);
    expect(out[4]).toBe(2 ** -133); // smallest bf16 subnormal
    expect(out[5]).toBe(3.140625);
    expect(Number.isNaN(bf16ToF32(new Uint16Array([0x7fc0]))[0])).toBe(true);
  });
});
