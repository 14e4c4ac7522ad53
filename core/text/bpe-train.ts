/**
 * Trains a CLIP-format byte-level BPE tokenizer on a caption corpus (for
 * "lethe-mini", the miniature Stable Diffusion trained on emoji captions) and
 * writes it as a diffusers `tokenizer/` folder that {@link ClipTokenizer}
 * reads exactly like an SD 1.x one.
 *
 * Pre-processing is the tokenizer's own ({@link clipWords}): BasicTokenizer
 * cleaning + lower-casing, the CLIP regex split, UTF-8 bytes mapped through
 * the GPT-2 bytes-to-unicode table. Each word becomes its byte symbols with
 * `</w>` appended to the last one; words are counted across the corpus.
 *
 * BPE: repeatedly merge the most frequent adjacent symbol pair (counts
 * weighted by word frequency) in every word, until the vocabulary is full or
 * no pair occurs at least `minFrequency` times.
 *
 * Tie-breaking (deterministic, independent of corpus order): among pairs with
 * the same count, the pair whose left symbol is smaller wins, then the one
 * whose right symbol is smaller; symbols compare as byte-symbol strings by
 * UTF-16 code unit (JS `<`), e.g. `e` < `n` < `w`, `es` < `s`.
 *
 * Guard: a pair whose concatenation is already a token (the same string by
 * another split, e.g. `ab`+`c` after `a`+`bc`) is never merged, so every merge
 * adds exactly one new token and the CLIP layout holds. With merges applied
 * to every word left to right this does not seem to arise (not seen on
 * random corpora); the guard keeps the layout safe if it does.
 *
 * Vocabulary layout (as CLIP builds it): ids 0..255 the byte symbols, 256..511
 * the byte symbols + `</w>`, then one token per merge in merge order, then
 * `<|startoftext|>` and `<|endoftext|>`: vocabSize = 512 + merges + 2.
 *
 * Special tokens written literally in a caption are not counted (the tokenizer
 * maps them straight to their ids).
 *
 * Efficiency: pair counts are kept in a map with, per pair, the list of words
 * holding it; a merge only revisits those words and updates the counts of the
 * pairs it changes. The best pair comes from a max-heap with lazy updates
 * (counts of existing pairs only fall; new pairs always contain the new symbol
 * and are pushed once, when the merge that creates them is done).
 */
import { randomBytes } from 'node:crypto';
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, renameSync, rmSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { FileFormatError } from '../errors.ts';
import { BYTE_SYMBOLS, CLIP_MAX_LENGTH, CLIP_MAX_MERGES, clipWords } from './clip-tokenizer.ts';

const START_OF_TEXT = '<|startoftext|>';
const END_OF_TEXT = '<|endoftext|>';
const WORD_END = '</w>';
/** 256 byte symbols + 256 with `</w>`. */
const BASE_TOKENS = 512;
/** Smallest useful vocabulary: the base tokens, one merge, two specials. */
export const MIN_BPE_VOCAB_SIZE = BASE_TOKENS + 1 + 2;
/** Largest vocabulary ClipTokenizer uses in full: it reads at most 48,894 merges. */
export const MAX_BPE_VOCAB_SIZE = BASE_TOKENS + CLIP_MAX_MERGES + 2;

export interface TrainClipBpeOptions {
  /**
   * Target vocabulary size, specials included: 512 + merges + 2, between
   * 515 and 49,408. Training stops earlier (a smaller vocabulary) when no pair
   * reaches `minFrequency`.
   */
  vocabSize: number;
  /** A pair must occur at least this often (word-frequency weighted) to be merged. Default 2. */
  minFrequency?: number;
}

export interface ClipBpe {
  /** token -> id, in the CLIP layout (ids 0 .. size-1, `<|endoftext|>` last). */
  vocab: Map<string, number>;
  /** Merges in rank order; merge i made token 512 + i. */
  merges: [string, string][];
}

export interface WriteTokenizerOptions {
  /** `model_max_length` in tokenizer_config.json. Default 77. */
  modelMaxLength?: number;
}

// ---------------------------------------------------------------------------
// Training.

/** Pair key: left * 2^16 + right (symbol ids stay below 49,408 < 2^16). */
const KEY = 65536;

/** Max-heap of (count, pair) with the tie-breaking described above. */
class PairHeap {
  private readonly counts: number[] = [];
  private readonly keys: number[] = [];
  constructor(private readonly symbols: readonly string[]) {}

  get size(): number {
    return this.keys.length;
  }

  /** True when entry i ranks before entry j. */
  private before(i: number, j: number): boolean {
    const ci = this.counts[i];
    const cj = this.counts[j];
    if (ci !== cj) return ci > cj;
    const ki = this.keys[i];
    const kj = this.keys[j];
    const li = this.symbols[Math.floor(ki / KEY)];
    const lj = this.symbols[Math.floor(kj / KEY)];
    if (li !== lj) return li < lj;
    return this.symbols[ki % KEY] < this.symbols[kj % KEY];
  }

  private swap(i: number, j: number): void {
    const c = this.counts[i];
    this.counts[i] = this.counts[j];
    this.counts[j] = c;
    const k = this.keys[i];
    this.keys[i] = this.keys[j];
    this.keys[j] = k;
  }

  push(count: number, key: number): void {
    this.counts.push(count);
    this.keys.push(key);
    let i = this.keys.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (!this.before(i, parent)) break;
      this.swap(i, parent);
      i = parent;
    }
  }

  /** Removes the top entry; returns false when empty. The entry is left in `top`. */
  pop(top: { count: number; key: number }): boolean {
    const n = this.keys.length;
    if (n === 0) return false;
    top.count = this.counts[0];
    top.key = this.keys[0];
    const lastCount = this.counts.pop() as number;
    const lastKey = this.keys.pop() as number;
    if (n > 1) {
      this.counts[0] = lastCount;
      this.keys[0] = lastKey;
      let i = 0;
      const m = n - 1;
      for (;;) {
        const l = 2 * i + 1;
        if (l >= m) break;
        const r = l + 1;
        const c = r < m && this.before(r, l) ? r : l;
        if (!this.before(c, i)) break;
        this.swap(c, i);
        i = c;
      }
    }
    return true;
  }
}

function checkOptions(options: TrainClipBpeOptions): { vocabSize: number; minFrequency: number } {
  const { vocabSize } = options;
  const minFrequency = options.minFrequency ?? 2;
  if (!Number.isInteger(vocabSize) || vocabSize < MIN_BPE_VOCAB_SIZE || vocabSize > MAX_BPE_VOCAB_SIZE) {
    throw new RangeError(
      `vocabSize must be an integer from ${MIN_BPE_VOCAB_SIZE} to ${MAX_BPE_VOCAB_SIZE} (512 byte tokens + merges + 2 specials), got ${vocabSize}`,
    );
  }
  if (!Number.isInteger(minFrequency) || minFrequency < 1) {
    throw new RangeError(`minFrequency must be an integer >= 1, got ${minFrequency}`);
  }
  return { vocabSize, minFrequency };
}

/**
 * Learns CLIP-format BPE merges from `texts` (captions). See the module
 * comment for the pre-processing, the vocabulary layout and tie-breaking.
 */
export function trainClipBpe(texts: Iterable<string>, options: TrainClipBpeOptions): ClipBpe {
  const { vocabSize, minFrequency } = checkOptions(options);
  const targetMerges = vocabSize - BASE_TOKENS - 2;

  // Symbols are token ids: 0..511 the base tokens, 512 + i merge i.
  const symbols: string[] = [...BYTE_SYMBOLS, ...BYTE_SYMBOLS.map((s) => s + WORD_END)];
  const tokenIds = new Map<string, number>();
  symbols.forEach((s, i) => tokenIds.set(s, i));
  const byteId = new Map<string, number>();
  BYTE_SYMBOLS.forEach((s, i) => byteId.set(s, i));

  // Word frequencies.
  const wordFreq = new Map<string, number>();
  for (const text of texts) {
    if (typeof text !== 'string') throw new TypeError(`trainClipBpe: every text must be a string, got ${typeof text}`);
    for (const w of clipWords(text)) {
      if (w === START_OF_TEXT || w === END_OF_TEXT) continue;
      wordFreq.set(w, (wordFreq.get(w) ?? 0) + 1);
    }
  }

  // Words as symbol-id arrays.
  const words: number[][] = [];
  const freqs: number[] = [];
  for (const [w, f] of wordFreq) {
    const ids: number[] = [];
    for (const ch of w) ids.push(byteId.get(ch) as number);
    ids[ids.length - 1] += 256; // the same symbol + </w>
    words.push(ids);
    freqs.push(f);
  }
  wordFreq.clear();

  // Pair counts and, per pair, the words that hold it (may list a word twice
  // or list words that lost the pair; merges check).
  const counts = new Map<number, number>();
  const where = new Map<number, number[]>();
  for (let w = 0; w < words.length; w++) {
    const s = words[w];
    const f = freqs[w];
    for (let i = 0; i + 1 < s.length; i++) {
      const k = s[i] * KEY + s[i + 1];
      const c = counts.get(k);
      if (c === undefined) {
        counts.set(k, f);
        where.set(k, [w]);
      } else {
        counts.set(k, c + f);
        const list = where.get(k) as number[];
        if (list[list.length - 1] !== w) list.push(w);
      }
    }
  }

  const heap = new PairHeap(symbols);
  for (const [k, c] of counts) if (c >= minFrequency) heap.push(c, k);

  const merges: [string, string][] = [];
  const visited = new Int32Array(words.length).fill(-1);
  const top = { count: 0, key: 0 };
  const added = (k: number, f: number): void => {
    counts.set(k, (counts.get(k) ?? 0) + f);
  };
  const removed = (k: number, f: number): void => {
    counts.set(k, (counts.get(k) as number) - f);
  };

  while (merges.length < targetMerges && heap.pop(top)) {
    const key = top.key;
    const actual = counts.get(key) ?? 0;
    if (actual !== top.count) {
      // Stale entry: the count fell since it was pushed.
      if (actual >= minFrequency) heap.push(actual, key);
      else if (actual === 0) {
        counts.delete(key);
        where.delete(key);
      }
      continue;
    }
    if (actual < minFrequency) break;
    const a = Math.floor(key / KEY);
    const b = key % KEY;
    const mergedText = symbols[a] + symbols[b];
    if (tokenIds.has(mergedText)) continue; // never merged: see the module comment

    const m = symbols.length;
    symbols.push(mergedText);
    tokenIds.set(mergedText, m);
    merges.push([symbols[a], symbols[b]]);
    const step = merges.length;

    const list = where.get(key) ?? [];
    where.delete(key);
    counts.delete(key);
    const fresh = new Set<number>();
    for (const w of list) {
      if (visited[w] === step) continue;
      visited[w] = step;
      const s = words[w];
      let found = false;
      for (let i = 0; i + 1 < s.length; i++) {
        if (s[i] === a && s[i + 1] === b) {
          found = true;
          break;
        }
      }
      if (!found) continue;
      const f = freqs[w];
      // Pairs without a or b are unchanged by the merge; the others go out...
      for (let i = 0; i + 1 < s.length; i++) {
        const x = s[i];
        const y = s[i + 1];
        if (x === a || x === b || y === a || y === b) {
          const k = x * KEY + y;
          if (k !== key) removed(k, f);
        }
      }
      const ns: number[] = [];
      for (let i = 0; i < s.length; ) {
        if (i + 1 < s.length && s[i] === a && s[i + 1] === b) {
          ns.push(m);
          i += 2;
        } else {
          ns.push(s[i]);
          i += 1;
        }
      }
      // ...and the new word's pairs with a, b or the new symbol come in.
      for (let i = 0; i + 1 < ns.length; i++) {
        const x = ns[i];
        const y = ns[i + 1];
        if (x === m || y === m) {
          const k = x * KEY + y;
          added(k, f);
          let wl = where.get(k);
          if (wl === undefined) {
            wl = [];
            where.set(k, wl);
          }
          if (wl[wl.length - 1] !== w) wl.push(w);
          fresh.add(k);
        } else if (x === a || x === b || y === a || y === b) {
          added(x * KEY + y, f);
        }
      }
      words[w] = ns;
    }
    for (const k of fresh) {
      const c = counts.get(k) as number;
      if (c >= minFrequency) heap.push(c, k);
    }
  }

  const vocab = new Map<string, number>();
  symbols.forEach((s, i) => vocab.set(s, i));
  vocab.set(START_OF_TEXT, symbols.length);
  vocab.set(END_OF_TEXT, symbols.length + 1);
  return { vocab, merges };
}

// ---------------------------------------------------------------------------
// Writing.

function specialToken(content: string): Record<string, unknown> {
  return { content, lstrip: false, normalized: true, rstrip: false, single_word: false };
}

/** The four files' contents; checks that `result` is a CLIP-layout tokenizer first. */
export function tokenizerFiles(result: ClipBpe, options: WriteTokenizerOptions = {}): Record<string, string> {
  const modelMaxLength = options.modelMaxLength ?? CLIP_MAX_LENGTH;
  if (!Number.isInteger(modelMaxLength) || modelMaxLength < 2) {
    throw new RangeError(`modelMaxLength must be an integer >= 2, got ${modelMaxLength}`);
  }
  const { vocab, merges } = result;
  if (merges.length === 0) {
    throw new RangeError('The tokenizer has no merges (the corpus repeats no symbol pair often enough); ClipTokenizer needs at least one. Train on more text or lower minFrequency.');
  }
  if (merges.length > CLIP_MAX_MERGES) {
    throw new RangeError(`The tokenizer has ${merges.length} merges; ClipTokenizer uses at most ${CLIP_MAX_MERGES}.`);
  }
  const size = BASE_TOKENS + merges.length + 2;
  const byId: string[] = new Array<string>(size);
  for (const [token, id] of vocab) {
    if (!Number.isInteger(id) || id < 0 || id >= size || byId[id] !== undefined) {
      throw new RangeError(`vocab is not in the CLIP layout: ${JSON.stringify(token)} has id ${id} (expected ids 0..${size - 1}, each once)`);
    }
    byId[id] = token;
  }
  const expect = (id: number, token: string): void => {
    if (byId[id] !== token) {
      throw new RangeError(`vocab is not in the CLIP layout: id ${id} should be ${JSON.stringify(token)}, found ${JSON.stringify(byId[id])}`);
    }
  };
  BYTE_SYMBOLS.forEach((s, i) => {
    expect(i, s);
    expect(256 + i, s + WORD_END);
  });
  merges.forEach(([l, r], i) => {
    if (l.length === 0 || r.length === 0 || /\s/.test(l + r)) {
      throw new RangeError(`merge ${i + 1} ${JSON.stringify([l, r])} has an empty symbol or whitespace`);
    }
    expect(BASE_TOKENS + i, l + r);
  });
  expect(size - 2, START_OF_TEXT);
  expect(size - 1, END_OF_TEXT);

  const vocabJson = '{\n' + byId.map((t, i) => `  ${JSON.stringify(t)}: ${i}`).join(',\n') + '\n}\n';
  const mergesTxt = '#version: 0.2\n' + merges.map(([l, r]) => `${l} ${r}\n`).join('');
  const specialMap = {
    bos_token: specialToken(START_OF_TEXT),
    eos_token: specialToken(END_OF_TEXT),
    pad_token: END_OF_TEXT,
    unk_token: specialToken(END_OF_TEXT),
  };
  const config = {
    add_prefix_space: false,
    added_tokens_decoder: {
      [String(size - 2)]: { ...specialToken(START_OF_TEXT), special: true },
      [String(size - 1)]: { ...specialToken(END_OF_TEXT), special: true },
    },
    bos_token: START_OF_TEXT,
    clean_up_tokenization_spaces: false,
    do_lower_case: true,
    eos_token: END_OF_TEXT,
    errors: 'replace',
    model_max_length: modelMaxLength,
    pad_token: END_OF_TEXT,
    tokenizer_class: 'CLIPTokenizer',
    unk_token: END_OF_TEXT,
  };
  return {
    'vocab.json': vocabJson,
    'merges.txt': mergesTxt,
    'special_tokens_map.json': JSON.stringify(specialMap, null, 2) + '\n',
    'tokenizer_config.json': JSON.stringify(config, null, 2) + '\n',
  };
}

function writeSynced(file: string, content: string): void {
  const fd = openSync(file, 'wx');
  try {
    writeFileSync(fd, content, 'utf8');
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/**
 * Writes `result` as a diffusers tokenizer folder at `dir` (the `tokenizer/`
 * folder itself): `vocab.json`, `merges.txt`, `special_tokens_map.json`,
 * `tokenizer_config.json`. When `dir` does not exist the files are written
 * to a temp folder beside it that is then renamed into place, so `dir`
 * appears complete or not at all. When it exists, each file is written to a
 * temp file in it and renamed over the old one (other files are left alone).
 */
export function writeTokenizerFolder(dir: string, result: ClipBpe, options: WriteTokenizerOptions = {}): void {
  const files = tokenizerFiles(result, options);
  const suffix = `.tmp-${process.pid}-${randomBytes(6).toString('hex')}`;
  if (!existsSync(dir)) {
    mkdirSync(path.dirname(path.resolve(dir)), { recursive: true });
    const tmpDir = path.resolve(dir) + suffix;
    mkdirSync(tmpDir);
    try {
      for (const [name, content] of Object.entries(files)) writeSynced(path.join(tmpDir, name), content);
      renameSync(tmpDir, dir);
    } catch (err) {
      rmSync(tmpDir, { recursive: true, force: true });
      throw err;
    }
    return;
  }
  if (!statSync(dir).isDirectory()) {
    throw new FileFormatError(dir, `${dir} exists and is not a folder; the tokenizer needs a folder there. Pick another path.`);
  }
  const temps: Array<[tmp: string, target: string]> = [];
  try {
    for (const [name, content] of Object.entries(files)) {
      const target = path.join(dir, name);
      const tmp = target + suffix;
      temps.push([tmp, target]);
      writeSynced(tmp, content);
    }
    for (const [tmp, target] of temps) renameSync(tmp, target);
  } catch (err) {
    for (const [tmp] of temps) {
      try {
        unlinkSync(tmp);
      } catch {
        // Already renamed, or never created.
      }
    }
    throw err;
  }
}
