import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileFormatError } from '../core/errors.ts';
import { openSafetensors, writeSafetensors, type TensorToWrite } from '../core/io/safetensors.ts';
import { SD1_CLIP_TEXT_CONFIG, parseClipTextConfig, type ClipTextConfig } from '../core/nn/clip-text.ts';
import { ModelLoadError } from '../core/nn/params.ts';
import { compareOutputs, loadFixture, type FixtureCase } from '../core/parity/fixture.ts';
import { runClipText, runClipTextOnce } from '../core/parity/clip-text.ts';
import type { HostTensor } from '../core/runtime/session.ts';
import { FIXTURES_DIR, hasShared } from './helpers/shared.ts';

const maxAbsDiff = (a: ArrayLike<number | bigint>, b: ArrayLike<number | bigint>): number => {
  expect(a.length).toBe(b.length);
  return Array.from(a, (v, k) => Math.abs(Number(v) - Number(b[k]))).reduce((m, v) => Math.max(m, v), 0);
};

describe('parseClipTextConfig', () => {
  it('fills in the SD 1.x defaults', () => {
    expect(parseClipTextConfig({})).toEqual(SD1_CLIP_TEXT_CONFIG);
    expect(parseClipTextConfig({ hidden_act: 'gelu', num_hidden_layers: 2, unrelated: [1] })).toMatchObject({ hidden_act: 'gelu', num_hidden_layers: 2, hidden_size: 768 });
  });

  it('reports every bad value at once', () => {
    const bad = (): ClipTextConfig => parseClipTextConfig({ hidden_act: 'relu', num_attention_heads: 0, layer_norm_eps: -1, eos_token_id: 'x' }, 'te/config.json');
    expect(bad).toThrow(FileFormatError);
    for (const part of [/^te\/config\.json: /, /hidden_act "relu"/, /num_attention_heads 0/, /layer_norm_eps -1/, /eos_token_id "x"/]) expect(bad).toThrow(part);
    expect(() => parseClipTextConfig({ hidden_size: 100 })).toThrow(/not divisible by num_attention_heads 12/);
    expect(() => parseClipTextConfig([])).toThrow(FileFormatError);
  });
});

describe.skipIf(!hasShared)('CLIP text encoder against the clip-text vectors', () => {
  let c: FixtureCase;
  let cfg: ClipTextConfig;
  let ids: HostTensor;
  let scratch = '';
  const [batch, length] = [2, 77];
  beforeAll(() => {
    c = loadFixture(path.join(FIXTURES_DIR, 'sd1', 'clip-text'));
    cfg = parseClipTextConfig(c.json.config);
    ids = { dtype: 'int64', shape: [batch, length], data: c.input('input_ids') as BigInt64Array };
    scratch = mkdtempSync(path.join(tmpdir(), 'lethe-clip-'));
  });
  afterAll(() => {
    if (scratch) rmSync(scratch, { recursive: true, force: true });
  });
  const expected = (name: string): Float32Array => c.io!.read(`expected.${name}`) as Float32Array;

  it('matches last_hidden_state, pooler_output and hidden_states within tolerance', async () => {
    const reports = compareOutputs(c, await runClipText(c));
    expect(reports.map((r) => r.name).sort()).toEqual(['hidden_states.0', 'hidden_states.1', 'hidden_states.2', 'last_hidden_state', 'pooler_output']);
    for (const r of reports) expect(r, `${r.name}: worst ratio ${r.worstRatio}`).toMatchObject({ pass: true });
  });

  it('gives each batch row what a batch of one gives', async () => {
    const both = await runClipTextOnce(c.weightsPath(), cfg, ids);
    expect(both.last_hidden_state.shape).toEqual([batch, length, cfg.hidden_size]);
    expect(both.pooler_output.shape).toEqual([batch, cfg.hidden_size]);
    for (let b = 0; b < batch; b++) {
      const row: HostTensor = { dtype: 'int64', shape: [1, length], data: (ids.data as BigInt64Array).subarray(b * length, (b + 1) * length) };
      const one = await runClipTextOnce(c.weightsPath(), cfg, row);
      const d = cfg.hidden_size;
      expect(one.last_hidden_state.data).toEqual(both.last_hidden_state.data.subarray(b * length * d, (b + 1) * length * d));
      expect(one.pooler_output.data).toEqual(both.pooler_output.data.subarray(b * d, (b + 1) * d));
    }
  });

  it('runs shorter sequences with the first positions', async () => {
    const short = 9;
    const rows = Array.from({ length: batch }, (_, b) => (ids.data as BigInt64Array).subarray(b * length, b * length + short));
    const out = await runClipTextOnce(c.weightsPath(), cfg, { dtype: 'int64', shape: [batch, short], data: BigInt64Array.from(rows.flatMap((r) => [...r])) });
    expect(out.last_hidden_state.shape).toEqual([batch, short, cfg.hidden_size]);
    // Causal attention: the first positions do not see the ones cut off.
    const d = cfg.hidden_size;
    const got = out.last_hidden_state.data as Float32Array;
    const full = expected('last_hidden_state');
    for (let b = 0; b < batch; b++) {
      const a = got.subarray(b * short * d, (b + 1) * short * d);
      const e = full.subarray(b * length * d, b * length * d + short * d);
      expect(maxAbsDiff(a, e)).toBeLessThan(2e-5);
    }
  });

  it('clip skip 2 is final_layer_norm of the penultimate layer', async () => {
    const skipped = await runClipTextOnce(c.weightsPath(), cfg, ids, { clipSkip: 2 });
    const truncated = await runClipTextOnce(c.weightsPath(), { ...cfg, num_hidden_layers: cfg.num_hidden_layers - 1 }, ids);
    // Different graphs, so onnxruntime may fuse differently: equal up to float32 rounding.
    expect(maxAbsDiff(skipped.last_hidden_state.data, truncated.last_hidden_state.data)).toBeLessThan(1e-5);
    expect(skipped.pooler_output.data).toEqual((await runClipTextOnce(c.weightsPath(), cfg, ids)).pooler_output.data);
    await expect(runClipTextOnce(c.weightsPath(), cfg, ids, { clipSkip: cfg.num_hidden_layers + 1 })).rejects.toThrow(/clipSkip must be an integer in \[1, 2\]/);
  });

  it('pools at the first eos_token_id when it is not the legacy 2, else at position 0', async () => {
    // The end-of-text id 999 is also the largest id, so both rules pick the same position.
    const atEos = await runClipTextOnce(c.weightsPath(), { ...cfg, eos_token_id: 999 }, ids);
    expect(atEos.pooler_output.data).toEqual((await runClipTextOnce(c.weightsPath(), cfg, ids)).pooler_output.data);
    const absent = [...(ids.data as BigInt64Array)].reduce((m, v) => (v < m ? v : m)) - 1n;
    const none = await runClipTextOnce(c.weightsPath(), { ...cfg, eos_token_id: Number(absent) }, ids);
    const d = cfg.hidden_size;
    for (let b = 0; b < batch; b++) {
      expect(none.pooler_output.data.subarray(b * d, (b + 1) * d)).toEqual(none.last_hidden_state.data.subarray(b * length * d, b * length * d + d));
    }
  });

  it('reads checkpoints without the text_model. level through the scope prefix', async () => {
    const src = openSafetensors(c.weightsPath());
    const stripped = path.join(scratch, 'no-prefix.safetensors');
    try {
      const tensors = [...src.tensors.keys()].map((k): [string, TensorToWrite] => [k.replace(/^text_model\./, ''), { dtype: 'F32', shape: src.info(k).shape, data: src.readAsFloat32(k) }]);
      writeSafetensors(stripped, tensors);
    } finally {
      src.close();
    }
    const out = await runClipTextOnce(stripped, cfg, ids, { prefix: '' });
    expect(out.last_hidden_state.data).toEqual((await runClipTextOnce(c.weightsPath(), cfg, ids)).last_hidden_state.data);
  });

  it('reports every wrong shape and missing tensor when the config does not match the checkpoint', async () => {
    const wide = parseClipTextConfig({ ...c.json.config, hidden_size: 48, num_hidden_layers: 3 });
    const err = await runClipTextOnce(c.weightsPath(), wide, ids).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ModelLoadError);
    const { badShapes, missing, message } = err as ModelLoadError;
    expect(badShapes).toContain('text_model.embeddings.token_embedding.weight: F32[1000,32] in the file, float [1000,48] expected');
    expect(badShapes).toContain('text_model.final_layer_norm.weight: F32[32] in the file, float [48] expected');
    expect(missing).toEqual(expect.arrayContaining(['text_model.encoder.layers.2.self_attn.q_proj.weight', 'text_model.encoder.layers.2.mlp.fc2.bias']));
    expect(missing.every((k) => k.startsWith('text_model.encoder.layers.2.'))).toBe(true);
    expect(message).toMatch(/CLIPTextModel: the checkpoint does not match its config/);
  });
});
