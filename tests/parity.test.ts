import { spawnSync } from 'node:child_process';
import { cpSync, mkdtempSync, readdirSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { openSafetensors, writeSafetensors } from '../core/io/safetensors.ts';
import { runParity, type ParityResult } from '../core/parity/run.ts';
import { FIXTURES_DIR, hasShared } from './helpers/shared.ts';

const SD1 = path.join(FIXTURES_DIR, 'sd1');
const LETHE = fileURLToPath(new URL('../bin/lethe.js', import.meta.url));
const cases = hasShared ? readdirSync(SD1, { withFileTypes: true }).filter((e) => e.isDirectory()).map((e) => e.name) : [];

describe.skipIf(!hasShared)('every reference case passes within its tolerance', () => {
  for (const name of cases) {
    it(name, async () => {
      const r: ParityResult = await runParity(path.join(SD1, name));
      const failed = r.outputs.filter((o) => !o.pass).map((o) => `${o.name}: worst/allowed ${o.worstRatio} ${o.message ?? ''}`);
      expect(failed).toEqual([]);
      expect(r.outputs.length).toBeGreaterThan(0);
    });
  }
});

describe.skipIf(!hasShared)('lethe dev parity (the command)', () => {
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'lethe-parity-'));
  afterAll(() => rmSync(tmp, { recursive: true, force: true }));

  it('prints per-output errors as JSON and exits 0 when all pass', () => {
    const r = spawnSync(process.execPath, [LETHE, 'dev', 'parity', path.join(SD1, 'vae-decode'), path.join(SD1, 'scheduler-ddim'), '--json'], { encoding: 'utf8' });
    expect(r.status).toBe(0);
    const results = JSON.parse(r.stdout) as ParityResult[];
    expect(results.map((x) => x.name)).toEqual(['vae-decode', 'scheduler-ddim']);
    expect(results[0].outputs[0]).toMatchObject({ name: 'image', pass: true });
    expect(results[0].outputs[0].maxAbsError).toBeLessThan(1e-4);
  });

  it('a case whose expected output is perturbed beyond tolerance fails with exit 1', () => {
    // A copy of vae-decode with one expected pixel moved by 1e-3 (its atol is 5.7e-5).
    const dir = path.join(tmp, 'vae-decode-perturbed');
    cpSync(path.join(SD1, 'vae-decode'), dir, { recursive: true });
    const io = openSafetensors(path.join(dir, 'io.safetensors'));
    const tensors = Object.fromEntries([...io.tensors.values()].map((t) => [t.name, { dtype: t.dtype, shape: t.shape, data: io.read(t.name) }]));
    io.close();
    (tensors['expected.image'].data as Float32Array)[17] += 1e-3;
    writeSafetensors(path.join(dir, 'io.safetensors'), tensors);
    // The weights path in fixture.json is relative; the copy carries the weights file itself.
    const r = spawnSync(process.execPath, [LETHE, 'dev', 'parity', dir], { encoding: 'utf8' });
    expect(r.status).toBe(1);
    expect(r.stdout).toMatch(/FAIL vae-decode/);
    expect(r.stdout).toMatch(/FAIL image: max abs 1\.0\de-3/);
  });

  it('a directory that is not a fixture gets a clear message and exit 2', () => {
    const r = spawnSync(process.execPath, [LETHE, 'dev', 'parity', tmp + '/nothing-here'], { encoding: 'utf8' });
    expect(r.status).toBe(2);
    expect(r.stderr).toMatch(/lethe: /);
  });
});
