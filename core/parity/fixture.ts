/**
 * Reference-vector cases in the `sd1-fixture/1` format (shared/fixtures/README.md):
 * fixture.json + io.safetensors (+ weights). A runner computes a case's outputs;
 * `compareOutputs` applies each output's allclose tolerance.
 */
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { FileFormatError } from '../errors.ts';
import { openSafetensors, type SafetensorsFile } from '../io/safetensors.ts';

export interface Tolerance {
  rtol: number;
  atol: number;
}

export interface FixtureJson {
  format: string;
  name: string;
  component: string;
  config: Record<string, unknown>;
  weights: string | Record<string, string> | null;
  params?: Record<string, unknown>;
  inputs: Record<string, { shape: number[]; dtype: string }>;
  outputs: Record<string, { shape: number[]; dtype: string; tolerance?: Tolerance; max_abs?: number }>;
  tolerance?: Tolerance;
  notes?: unknown;
}

export interface FixtureCase {
  dir: string;
  json: FixtureJson;
  /** io.safetensors, or null when the case has none (the tokenizer case). */
  io: SafetensorsFile | null;
  /** Absolute path of a weights file named in fixture.json. */
  weightsPath(part?: string): string;
  /** The float32 or int64 input tensor `input.<name>`. */
  input(name: string): Float32Array | BigInt64Array;
}

export type OutputValue = { shape: readonly number[]; data: Float32Array | BigInt64Array | Int32Array | number[] };
export type ParityRunner = (c: FixtureCase) => Promise<Record<string, OutputValue>>;

export function loadFixture(dir: string): FixtureCase {
  const jsonPath = path.join(dir, 'fixture.json');
  let json: FixtureJson;
  try {
    json = JSON.parse(readFileSync(jsonPath, 'utf8')) as FixtureJson;
  } catch (e) {
    throw new FileFormatError(jsonPath, `cannot read ${jsonPath}: ${(e as Error).message}. A fixture directory needs a fixture.json in the sd1-fixture/1 format.`, { cause: e });
  }
  if (json.format !== 'sd1-fixture/1') throw new FileFormatError(jsonPath, `${jsonPath}: format '${json.format}' is not 'sd1-fixture/1'`);
  const ioPath = path.join(dir, 'io.safetensors');
  // The tokenizer case keeps its strings in cases.json and has no io.safetensors.
  const io: SafetensorsFile | null = existsSync(ioPath) || json.component !== 'tokenizer' ? openSafetensors(ioPath) : null;
  return {
    dir,
    json,
    io,
    weightsPath(part) {
      const w = json.weights;
      const rel = typeof w === 'string' ? w : w && part ? w[part] : undefined;
      if (!rel) throw new FileFormatError(jsonPath, `${jsonPath} names no weights${part ? ` for '${part}'` : ''}`);
      return path.resolve(dir, rel);
    },
    input(name) {
      if (!io) throw new FileFormatError(ioPath, `${ioPath} is missing`);
      const t = io.read(`input.${name}`);
      if (t instanceof Float32Array || t instanceof BigInt64Array) return t;
      return io.readAsFloat32(`input.${name}`);
    },
  };
}

export interface OutputReport {
  name: string;
  pass: boolean;
  maxAbsError: number;
  maxRelError: number;
  tolerance: Tolerance | 'exact';
  /** Largest |err| / (atol + rtol |expected|): pass when <= 1. */
  worstRatio: number;
  message?: string;
}

/** Compares computed outputs with `expected.<name>` under numpy.allclose semantics. */
export function compareOutputs(c: FixtureCase, actual: Record<string, OutputValue>): OutputReport[] {
  return Object.entries(c.json.outputs).map(([name, spec]) => {
    const got = actual[name];
    if (!got) return { name, pass: false, maxAbsError: NaN, maxRelError: NaN, tolerance: spec.tolerance ?? 'exact', worstRatio: Infinity, message: 'not computed' };
    if (got.shape.join(',') !== spec.shape.join(',')) {
      return { name, pass: false, maxAbsError: NaN, maxRelError: NaN, tolerance: spec.tolerance ?? 'exact', worstRatio: Infinity, message: `shape [${got.shape}] instead of [${spec.shape}]` };
    }
    const expected = c.io!.read(`expected.${name}`);
    const exact = !spec.dtype.startsWith('float') || !spec.tolerance;
    const tol = spec.tolerance ?? { rtol: 0, atol: 0 };
    let maxAbs = 0;
    let maxRel = 0;
    let worst = 0;
    for (let k = 0; k < expected.length; k++) {
      const e = Number(expected[k]);
      const a = Number(got.data[k]);
      const err = Math.abs(a - e);
      if (Number.isNaN(err)) {
        worst = Infinity;
        maxAbs = NaN;
        break;
      }
      maxAbs = Math.max(maxAbs, err);
      if (e !== 0) maxRel = Math.max(maxRel, err / Math.abs(e));
      const bound = tol.atol + tol.rtol * Math.abs(e);
      worst = Math.max(worst, bound > 0 ? err / bound : err > 0 ? Infinity : 0);
    }
    return { name, pass: worst <= 1, maxAbsError: maxAbs, maxRelError: maxRel, tolerance: exact ? 'exact' : tol, worstRatio: worst };
  });
}
