import { copyFileSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FileFormatError } from '../core/errors.ts';
import { ClipTokenizer, basicClean } from '../core/text/clip-tokenizer.ts';
import { FIXTURES_DIR, SHARED_DIR, hasShared } from './helpers/shared.ts';

const CLIP_DIR = path.join(SHARED_DIR, 'data', 'clip');
const TOKENIZER_FIXTURE = path.join(FIXTURES_DIR, 'sd1', 'tokenizer');
const PIPELINE_FIXTURE = path.join(FIXTURES_DIR, 'sd1', 'pipeline');

interface TokenizerCase {
  text: string;
  ids: number[];
  tokens: string[];
  sd_ids: number[];
}

const cases: TokenizerCase[] = hasShared
  ? (JSON.parse(readFileSync(path.join(TOKENIZER_FIXTURE, 'cases.json'), 'utf8')) as { cases: TokenizerCase[] }).cases
  : [];

let scratch = '';
beforeAll(() => {
  scratch = mkdtempSync(path.join(tmpdir(), 'lethe-tokenizer-'));
});
afterAll(() => {
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

/** Writes a file under a fresh folder in the scratch directory and returns its path. */
function scratchFile(dir: string, name: string, content: string | Buffer): string {
  const file = path.join(scratch, dir, name);
  mkdirSync(path.dirname(file), { recursive: true });
  writeFileSync(file, content);
  return file;
}

/** Reads one I64 tensor from a safetensors file (u64 LE header length, JSON header, raw data). */
function readI64Tensor(file: string, name: string): { shape: number[]; data: number[] } {
  const buf = readFileSync(file);
  const headerLen = Number(buf.readBigUInt64LE(0));
  const header = JSON.parse(buf.subarray(8, 8 + headerLen).toString('utf8')) as Record<
    string,
    { dtype: string; shape: number[]; data_offsets: [number, number] }
  >;
  const info = header[name];
  if (!info) throw new Error(`${name} not in ${file}`);
  expect(info.dtype).toBe('I64');
  const [begin, end] = info.data_offsets;
  const data: number[] = [];
  for (let off = 8 + headerLen + begin; off < 8 + headerLen + end; off += 8) data.push(Number(buf.readBigInt64LE(off)));
  return { shape: info.shape, data };
}

/**
 * A tiny tokenizer built the way CLIP builds its vocabulary: bytes,
 * bytes + </w>, one token per merge, then the two specials.
 */
function writeTinyTokenizer(dir: string, merges: string[], drop: string[] = []): { vocab: string; merges: string } {
  const byteChars: string[] = [];
  for (let b = 0x21; b <= 0x7e; b++) byteChars.push(String.fromCharCode(b));
  for (let b = 0xa1; b <= 0xac; b++) byteChars.push(String.fromCharCode(b));
  for (let b = 0xae; b <= 0xff; b++) byteChars.push(String.fromCharCode(b));
  for (let n = 0; byteChars.length < 256; n++) byteChars.push(String.fromCharCode(256 + n));
  const tokens = [...byteChars, ...byteChars.map((c) => c + '</w>'), ...merges.map((m) => m.replace(' ', '')), '<|startoftext|>', '<|endoftext|>'];
  const vocab: Record<string, number> = {};
  tokens.forEach((t, i) => {
    if (!drop.includes(t)) vocab[t] = i;
  });
  return {
    vocab: scratchFile(dir, 'vocab.json', JSON.stringify(vocab)),
    merges: scratchFile(dir, 'merges.txt', ['#version: 0.2', ...merges].join('\n') + '\n'),
  };
}

describe('ClipTokenizer on a synthetic vocabulary', () => {
  it('applies merges lowest rank first and marks word ends', () => {
    const files = writeTinyTokenizer('tiny', ['c a', 'ca t</w>', 'a b']);
    const tok = ClipTokenizer.fromFiles(files.vocab, files.merges);
    expect(tok.vocabSize).toBe(512 + 3 + 2);
    expect(tok.mergeCount).toBe(3);
    expect(tok.bosId).toBe(515);
    expect(tok.eosId).toBe(516);
    expect(tok.padId).toBe(516);
    expect(tok.tokenize('cat CATS ababab')).toEqual(['cat</w>', 'ca', 't', 's</w>', 'ab', 'ab', 'a', 'b</w>']);
    expect(tok.tokenize('x')).toEqual(['x</w>']);
    expect(tok.decode(tok.encode('cat CATS ababab'))).toBe('cat cats ababab');
    // Python's `regex` (IGNORECASE) matches U+0345 with no branch: it is dropped and splits the word.
    expect(tok.tokenize('x\u0345x')).toEqual(['x</w>', 'x</w>']);
  });

  it('maps pieces missing from the vocabulary to the unk token (<|endoftext|>)', () => {
    const files = writeTinyTokenizer('tiny-unk', ['c a'], ['z</w>']);
    const tok = ClipTokenizer.fromFiles(files.vocab, files.merges);
    expect(tok.unkId).toBe(tok.tokenToId('<|endoftext|>'));
    expect(tok.tokenize('caz')).toEqual(['ca', 'z</w>']);
    expect(tok.encode('caz')).toEqual([tok.tokenToId('ca'), tok.unkId]);
    expect(tok.encode('z')).toEqual([tok.unkId]);
  });

  it('runs the BasicTokenizer pass (no ftfy): controls removed, whitespace collapsed, CJK spaced, NFC, lower-case', () => {
    expect(basicClean('  A\u0000B\u200b  c\t\nD\u00a0e ')).toBe('ab c d e');
    expect(basicClean('中文abc')).toBe('中 文 abc');
    expect(basicClean('Cafe\u0301')).toBe('café');
    expect(basicClean('&amp; ÉTÉ')).toBe('&amp; été');
    expect(basicClean('')).toBe('');
  });

  it('splits special tokens out exactly, before the CLIP regex', () => {
    const files = writeTinyTokenizer('tiny-special', ['c a']);
    const tok = ClipTokenizer.fromFiles(files.vocab, files.merges);
    // Without the exact split the CLIP regex would read '!!<|' as one punctuation run.
    expect(tok.tokenize('!!<|endoftext|>ca')).toEqual(['!', '!</w>', '<|endoftext|>', 'c', 'a</w>']);
    expect(tok.encode('x<|startoftext|>')).toEqual([tok.tokenToId('x</w>'), tok.bosId]);
    // Not an exact match, but lower-cased it is caught by the CLIP regex and the BPE cache.
    expect(tok.encode('<|ENDOFTEXT|>')).toEqual([tok.eosId]);
  });
});

describe('ClipTokenizer file errors', () => {
  it('throws FileFormatError for missing files', () => {
    const missing = path.join(tmpdir(), 'lethe-no-such-dir', 'vocab.json');
    expect(() => ClipTokenizer.fromFiles(missing, missing)).toThrow(FileFormatError);
    expect(() => ClipTokenizer.fromBpeGz(missing + '.gz')).toThrow(FileFormatError);
    expect(() => ClipTokenizer.fromDirectory(path.dirname(missing))).toThrow(FileFormatError);
    try {
      ClipTokenizer.fromFiles(missing, missing);
    } catch (err) {
      expect(err).toBeInstanceOf(FileFormatError);
      expect((err as FileFormatError).path).toBe(missing);
      expect((err as FileFormatError).code).toBe('file-format');
      expect((err as Error).message).toMatch(/not found/);
    }
  });

  it('throws FileFormatError for a corrupt vocab.json', () => {
    const files = writeTinyTokenizer('corrupt', ['c a']);
    const truncated = readFileSync(files.vocab, 'utf8').slice(0, 500);
    writeFileSync(files.vocab, truncated);
    expect(() => ClipTokenizer.fromFiles(files.vocab, files.merges)).toThrow(FileFormatError);
    expect(() => ClipTokenizer.fromFiles(files.vocab, files.merges)).toThrow(/not valid JSON/);
    writeFileSync(files.vocab, JSON.stringify(['a', 'b']));
    expect(() => ClipTokenizer.fromFiles(files.vocab, files.merges)).toThrow(FileFormatError);
    writeFileSync(files.vocab, JSON.stringify({ a: 'one' }));
    expect(() => ClipTokenizer.fromFiles(files.vocab, files.merges)).toThrow(/non-negative integers/);
  });

  it('throws FileFormatError for malformed or mismatched merges and a bad gzip', () => {
    const files = writeTinyTokenizer('bad-merges', ['c a']);
    writeFileSync(files.merges, '#version: 0.2\nc a b\n');
    expect(() => ClipTokenizer.fromFiles(files.vocab, files.merges)).toThrow(FileFormatError);
    writeFileSync(files.merges, '#version: 0.2\nq q\n');
    expect(() => ClipTokenizer.fromFiles(files.vocab, files.merges)).toThrow(/different tokenizers/);
    const notGz = scratchFile('bad-gz', 'bpe.txt.gz', 'plain text, not gzip');
    expect(() => ClipTokenizer.fromBpeGz(notGz)).toThrow(FileFormatError);
    const emptyGz = scratchFile('bad-gz', 'empty.txt.gz', gzipSync(Buffer.from('#version\n')));
    expect(() => ClipTokenizer.fromBpeGz(emptyGz)).toThrow(FileFormatError);
  });

  it('throws FileFormatError when a configured special token is not in the vocabulary', () => {
    const files = writeTinyTokenizer('bad-special', ['c a']);
    scratchFile('bad-special', 'special_tokens_map.json', JSON.stringify({ pad_token: '<pad>' }));
    expect(() => ClipTokenizer.fromDirectory(path.dirname(files.vocab))).toThrow(/padding token/);
    scratchFile('bad-special', 'special_tokens_map.json', '{');
    expect(() => ClipTokenizer.fromDirectory(path.dirname(files.vocab))).toThrow(FileFormatError);
  });
});

describe.skipIf(!hasShared)('ClipTokenizer with the CLIP vocabulary (SD 1.x)', () => {
  let tok: ClipTokenizer;
  beforeAll(() => {
    tok = ClipTokenizer.fromFiles(path.join(CLIP_DIR, 'vocab.json'), path.join(CLIP_DIR, 'merges.txt'));
  });

  it('has the fixture configuration', () => {
    const fixture = JSON.parse(readFileSync(path.join(TOKENIZER_FIXTURE, 'fixture.json'), 'utf8')) as {
      config: { vocab_size: number; bos_token_id: number; eos_token_id: number; pad_token_id: number; model_max_length: number };
    };
    expect(tok.vocabSize).toBe(fixture.config.vocab_size);
    expect(tok.bosId).toBe(fixture.config.bos_token_id);
    expect(tok.eosId).toBe(fixture.config.eos_token_id);
    expect(tok.padId).toBe(fixture.config.pad_token_id);
    expect(tok.modelMaxLength).toBe(fixture.config.model_max_length);
    expect(tok.mergeCount).toBe(48894);
    expect(cases.length).toBe(32);
  });

  it.each(cases.map((c, i) => [i, JSON.stringify(c.text).slice(0, 60), c] as const))('case %i %s', (_i, _label, c) => {
    expect(tok.tokenize(c.text)).toEqual(c.tokens);
    expect([tok.bosId, ...tok.encode(c.text), tok.eosId]).toEqual(c.ids);
    const model = tok.encodeForModel(c.text, 77);
    expect(Array.from(model.ids)).toEqual(c.sd_ids);
    expect(model.truncated).toBe(c.ids.length > 77);
  });

  it('encodes "a photo of a cat" as in the architecture notes', () => {
    const { ids, truncated, droppedText, length } = tok.encodeForModel('a photo of a cat');
    expect(ids).toHaveLength(77);
    expect(Array.from(ids.subarray(0, 7))).toEqual([49406, 320, 1125, 539, 320, 2368, 49407]);
    expect(Array.from(ids.subarray(7)).every((id) => id === 49407)).toBe(true);
    expect(truncated).toBe(false);
    expect(droppedText).toBe('');
    expect(length).toBe(7);
    expect(tok.tokenize('a photo of a cat')).toEqual(['a</w>', 'photo</w>', 'of</w>', 'a</w>', 'cat</w>']);
    expect(tok.decode(tok.encode('A Photo of a CAT'))).toBe('a photo of a cat');
    expect(tok.decode(ids, { skipSpecialTokens: true })).toBe('a photo of a cat');
    expect(Array.from(tok.encodeForModel('').ids.subarray(0, 3))).toEqual([49406, 49407, 49407]);
  });

  it('truncates a 200-word prompt to 77 ids with eos last and reports what was dropped', () => {
    const words = ['castle', 'forest', 'river', 'dragon', 'sunset'];
    const prompt = Array.from({ length: 200 }, (_, i) => words[i % words.length]).join(' ');
    const r = tok.encodeForModel(prompt);
    expect(r.ids).toHaveLength(77);
    expect(r.ids[0]).toBe(49406);
    expect(r.ids[76]).toBe(49407);
    expect(r.truncated).toBe(true);
    expect(r.length).toBe(77);
    expect(r.droppedIds).toHaveLength(200 - 75);
    expect(r.droppedText.length).toBeGreaterThan(0);
    // word 75 onwards was dropped (each word is one token here)
    expect(r.droppedText.startsWith(Array.from({ length: 3 }, (_, i) => words[(75 + i) % words.length]).join(' '))).toBe(true);
    expect(Array.from(r.ids.subarray(1, 76))).toEqual(tok.encode(prompt).slice(0, 75));
  });

  it('rebuilds the identical vocabulary from bpe_simple_vocab_16e6.txt.gz', () => {
    const gz = ClipTokenizer.fromBpeGz(path.join(CLIP_DIR, 'bpe_simple_vocab_16e6.txt.gz'));
    expect(gz.vocabSize).toBe(49408);
    expect(gz.mergeCount).toBe(48894);
    const a = tok.entries();
    const b = gz.entries();
    expect(a).toHaveLength(49408);
    expect(b).toEqual(a);
    expect(gz.idToToken(49406)).toBe('<|startoftext|>');
    expect(gz.idToToken(49407)).toBe('<|endoftext|>');
    for (const c of cases) expect(gz.tokenize(c.text)).toEqual(c.tokens);
  });

  it('exposes the vocabulary', () => {
    const entries = tok.entries();
    expect(entries).toHaveLength(49408);
    expect(entries[0]).toEqual(['!', 0]);
    expect(entries[320]).toEqual(['a</w>', 320]);
    expect(entries.every(([t, id], i) => id === i && tok.tokenToId(t) === i)).toBe(true);
    expect(tok.vocabulary().get('cat</w>')).toBe(2368);
    expect(tok.idToToken(2368)).toBe('cat</w>');
    expect(tok.tokenToId('not-a-token')).toBeUndefined();
    expect(tok.idToToken(49408)).toBeUndefined();
    expect(tok.tokenText(2368)).toBe('cat ');
    expect(tok.isSpecialId(49407)).toBe(true);
    expect(tok.isSpecialId(320)).toBe(false);
  });

  it('loads a diffusers tokenizer/ folder with its config files', () => {
    const dir = path.join(scratch, 'model', 'tokenizer');
    mkdirSync(dir, { recursive: true });
    copyFileSync(path.join(CLIP_DIR, 'vocab.json'), path.join(dir, 'vocab.json'));
    copyFileSync(path.join(CLIP_DIR, 'merges.txt'), path.join(dir, 'merges.txt'));
    const special = { content: '<|endoftext|>', lstrip: false, normalized: true, rstrip: false, single_word: false };
    writeFileSync(path.join(dir, 'tokenizer_config.json'), JSON.stringify({ model_max_length: 77, bos_token: { ...special, content: '<|startoftext|>' }, eos_token: special, unk_token: special, pad_token: '<|endoftext|>' }));
    writeFileSync(path.join(dir, 'special_tokens_map.json'), JSON.stringify({ bos_token: '<|startoftext|>', eos_token: '<|endoftext|>', pad_token: '<|endoftext|>', unk_token: '<|endoftext|>' }));
    // Works from the tokenizer folder and from the model folder above it.
    for (const d of [dir, path.dirname(dir)]) {
      const t = ClipTokenizer.fromDirectory(d);
      expect(t.padId).toBe(49407);
      expect(Array.from(t.encodeForModel('a photo of a cat').ids)).toEqual(Array.from(tok.encodeForModel('a photo of a cat').ids));
    }
    // SD 2.x style: pad with "!" (id 0), read from special_tokens_map.json.
    writeFileSync(path.join(dir, 'special_tokens_map.json'), JSON.stringify({ pad_token: '!' }));
    const sd2 = ClipTokenizer.fromDirectory(dir);
    expect(sd2.padId).toBe(0);
    expect(Array.from(sd2.encodeForModel('a cat').ids.subarray(0, 6))).toEqual([49406, 320, 2368, 49407, 0, 0]);
  });

  it('tokenizes the 3000-word list well under a second', () => {
    const fresh = ClipTokenizer.fromFiles(path.join(CLIP_DIR, 'vocab.json'), path.join(CLIP_DIR, 'merges.txt'));
    const words = readFileSync(path.join(SHARED_DIR, 'data', 'english_3000.csv'), 'utf8')
      .split('\n')
      .slice(1)
      .map((w) => w.trim())
      .filter((w) => w.length > 0);
    expect(words.length).toBe(3000);
    const t0 = performance.now();
    let count = 0;
    for (const w of words) count += fresh.encode(w).length;
    const ms = performance.now() - t0;
    expect(count).toBeGreaterThanOrEqual(3000);
    expect(ms).toBeLessThan(1000);
  });
});

describe.skipIf(!hasShared)('ClipTokenizer with the small pipeline tokenizer', () => {
  const fixture = hasShared
    ? (JSON.parse(readFileSync(path.join(PIPELINE_FIXTURE, 'fixture.json'), 'utf8')) as {
        config: { tokenizer: { vocab_size: number; bos_token_id: number; eos_token_id: number; pad_token_id: number; model_max_length: number } };
        params: { prompt: string[]; negative_prompt: string | null };
      })
    : undefined;

  it('loads with its special tokens', () => {
    const cfg = fixture!.config.tokenizer;
    for (const tok of [
      ClipTokenizer.fromFiles(path.join(PIPELINE_FIXTURE, 'vocab.json'), path.join(PIPELINE_FIXTURE, 'merges.txt')),
      ClipTokenizer.fromDirectory(PIPELINE_FIXTURE),
    ]) {
      expect(tok.vocabSize).toBe(cfg.vocab_size);
      expect(tok.bosId).toBe(cfg.bos_token_id);
      expect(tok.eosId).toBe(cfg.eos_token_id);
      expect(tok.padId).toBe(cfg.pad_token_id);
      expect(tok.modelMaxLength).toBe(cfg.model_max_length);
      expect(tok.mergeCount).toBe(486);
    }
  });

  it('encodes the pipeline prompts to the ids in io.safetensors', () => {
    const tok = ClipTokenizer.fromFiles(path.join(PIPELINE_FIXTURE, 'vocab.json'), path.join(PIPELINE_FIXTURE, 'merges.txt'));
    const io = path.join(PIPELINE_FIXTURE, 'io.safetensors');
    const cond = readI64Tensor(io, 'expected.cond_input_ids');
    const uncond = readI64Tensor(io, 'expected.uncond_input_ids');
    const prompts = fixture!.params.prompt;
    expect(cond.shape).toEqual([prompts.length, 77]);
    prompts.forEach((p, i) => {
      expect(Array.from(tok.encodeForModel(p, 77).ids)).toEqual(cond.data.slice(i * 77, (i + 1) * 77));
    });
    const negative = fixture!.params.negative_prompt ?? '';
    prompts.forEach((_p, i) => {
      expect(Array.from(tok.encodeForModel(negative, 77).ids)).toEqual(uncond.data.slice(i * 77, (i + 1) * 77));
    });
  });
});
