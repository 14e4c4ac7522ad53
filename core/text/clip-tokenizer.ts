/**
 * CLIP byte-level BPE tokenizer, as Stable Diffusion 1.x uses it.
 *
 * The output matches transformers' slow `CLIPTokenizer` (the one
 * `StableDiffusionPipeline` loads) running without the optional `ftfy`
 * package:
 *
 * 1. The text is split on the special tokens (`<|startoftext|>`,
 *    `<|endoftext|>`, the pad and unk tokens and any added tokens), exactly
 *    and case-sensitively, like transformers' added-token trie. Those pieces
 *    map straight to their ids.
 * 2. Every other piece goes through a BERT `BasicTokenizer` pass
 *    (`do_lower_case=True, strip_accents=False, do_split_on_punc=False`):
 *    NUL, U+FFFD and control/format characters (Unicode category C*, except
 *    tab/CR/LF) are removed, whitespace becomes a space, spaces are put around
 *    CJK ideographs, the text is NFC-normalised, split on whitespace and each
 *    word lower-cased. There is no HTML unescaping.
 * 3. The CLIP regex splits the result into words, each word's UTF-8 bytes are
 *    mapped through the GPT-2 bytes-to-unicode table, `</w>` is appended to
 *    the last symbol and the merges are applied lowest rank first.
 *
 * Like transformers, only the first 49152 - 256 - 2 = 48,894 merges are used,
 * and BPE pieces missing from the vocabulary become the unk token
 * (`<|endoftext|>`).
 */
import { existsSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { FileFormatError } from '../errors.ts';

/** CLIP reads merges `[1 : 49152 - 256 - 2 + 1]`: 48,894 of them. */
export const CLIP_MAX_MERGES = 49152 - 256 - 2;
/** Context length of the CLIP text encoder used by SD 1.x. */
export const CLIP_MAX_LENGTH = 77;

const START_OF_TEXT = '<|startoftext|>';
const END_OF_TEXT = '<|endoftext|>';
const WORD_END = '</w>';

/** A special or added token, as in `special_tokens_map.json` / `tokenizer_config.json`. */
export interface TokenSpec {
  readonly content: string;
  /** Strip whitespace to the left of the token when it appears in text. */
  readonly lstrip?: boolean;
  /** Strip whitespace to the right of the token when it appears in text. */
  readonly rstrip?: boolean;
}

export interface ClipTokenizerOptions {
  /** Default `<|startoftext|>`. */
  bosToken?: string | TokenSpec;
  /** Default `<|endoftext|>`. */
  eosToken?: string | TokenSpec;
  /** Default `<|endoftext|>` (SD 1.x); SD 2.x tokenizers use `!`. */
  padToken?: string | TokenSpec;
  /** Default `<|endoftext|>`. */
  unkToken?: string | TokenSpec;
  /** Default 77. */
  modelMaxLength?: number;
  /**
   * Extra tokens (e.g. textual-inversion words from `added_tokens.json`).
   * They are matched exactly in the text, like the special tokens. A token
   * already in the vocabulary keeps its id; a new one needs `id`.
   */
  addedTokens?: ReadonlyArray<TokenSpec & { readonly id?: number }>;
}

/** Result of {@link ClipTokenizer.encodeForModel}. */
export interface ModelInput {
  /** `[bos, ...ids, eos, pad...]`, exactly `maxLength` long. */
  readonly ids: Int32Array;
  /** Tokens that carry text: bos + kept ids + eos (the rest is padding). */
  readonly length: number;
  /** True when the prompt did not fit and ids were dropped. */
  readonly truncated: boolean;
  /** The ids that were dropped (empty when not truncated). */
  readonly droppedIds: readonly number[];
  /** The decoded text of the dropped ids, for "prompt too long: dropped '...'". */
  readonly droppedText: string;
}

export interface DecodeOptions {
  /** Leave out bos/eos/pad/unk. Default false (transformers' default). */
  skipSpecialTokens?: boolean;
}

// ---------------------------------------------------------------------------
// Bytes <-> unicode (GPT-2 / CLIP `bytes_to_unicode`).

interface ByteTable {
  /** byte -> the single character standing for it. */
  readonly encode: readonly string[];
  /** The 256 characters in CLIP's vocabulary order (printable bytes first). */
  readonly order: readonly string[];
  /** char code -> byte, for decoding. */
  readonly decode: ReadonlyMap<string, number>;
}

function buildByteTable(): ByteTable {
  const bs: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b); // '!'..'~'
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b); // '¡'..'¬'
  for (let b = 0xae; b <= 0xff; b++) bs.push(b); // '®'..'ÿ'
  const cs = bs.slice();
  const printable = new Set(bs);
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!printable.has(b)) {
      bs.push(b);
      cs.push(256 + n);
      n++;
    }
  }
  const encode = new Array<string>(256);
  const order: string[] = [];
  const decode = new Map<string, number>();
  for (let i = 0; i < bs.length; i++) {
    const ch = String.fromCharCode(cs[i]);
    encode[bs[i]] = ch;
    order.push(ch);
    decode.set(ch, bs[i]);
  }
  return { encode, order, decode };
}

const BYTES = buildByteTable();

/** The 256 byte symbols in CLIP's vocabulary order (ids 0..255; + `</w>` gives ids 256..511). */
export const BYTE_SYMBOLS: readonly string[] = BYTES.order;

// ---------------------------------------------------------------------------
// Text normalisation (BasicTokenizer without ftfy) and the CLIP split.

const PRINTABLE_ASCII_RE = /^[\x20-\x7e]*$/;
const CONTROL_RE = /^\p{C}$/u;
const SPACE_SEPARATOR_RE = /^\p{Zs}$/u;
/** What Python's `str.split()` still splits on after `_clean_text`. */
const SPLIT_RE = /[ \u2028\u2029]+/u;
const CLIP_PATTERN =
  /<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+/giu;

function isCjkIdeograph(cp: number): boolean {
  return (
    (cp >= 0x4e00 && cp <= 0x9fff) ||
    (cp >= 0x3400 && cp <= 0x4dbf) ||
    (cp >= 0x20000 && cp <= 0x2a6df) ||
    (cp >= 0x2a700 && cp <= 0x2b73f) ||
    (cp >= 0x2b740 && cp <= 0x2b81f) ||
    (cp >= 0x2b820 && cp <= 0x2ceaf) ||
    (cp >= 0xf900 && cp <= 0xfaff) ||
    (cp >= 0x2f800 && cp <= 0x2fa1f)
  );
}

/**
 * transformers' `BasicTokenizer(strip_accents=False, do_split_on_punc=False)`
 * followed by `" ".join(...)`, as CLIPTokenizer does when ftfy is missing.
 */
export function basicClean(text: string): string {
  if (PRINTABLE_ASCII_RE.test(text)) {
    // Fast path: nothing to remove, no CJK, NFC is the identity.
    return text.split(' ').filter((w) => w.length > 0).join(' ').toLowerCase();
  }
  // _clean_text and _tokenize_chinese_chars (both per code point).
  let cleaned = '';
  for (const ch of text) {
    const cp = ch.codePointAt(0) as number;
    if (ch === ' ' || ch === '\t' || ch === '\n' || ch === '\r') {
      cleaned += ' ';
      continue;
    }
    if (cp === 0 || cp === 0xfffd || CONTROL_RE.test(ch)) continue;
    if (SPACE_SEPARATOR_RE.test(ch)) cleaned += ' ';
    else if (isCjkIdeograph(cp)) cleaned += ' ' + ch + ' ';
    else cleaned += ch;
  }
  const words = cleaned.normalize('NFC').split(SPLIT_RE);
  const out: string[] = [];
  for (const w of words) if (w.length > 0) out.push(w.toLowerCase());
  return out.join(' ');
}

/**
 * The CLIP pre-tokenizer on text without special tokens: {@link basicClean},
 * the CLIP regex split, and each word's UTF-8 bytes mapped to byte symbols
 * (no `</w>` yet). These are the words BPE runs on (and the BPE trainer
 * counts).
 */
export function clipWords(text: string): string[] {
  // U+0345 (combining ypogegrammeni) case-folds to a letter: JS's /iu
  // matches it with \p{L}, Python's `regex` with IGNORECASE matches it with
  // no branch, so findall skips it and it breaks the run. A space does the same.
  const cleaned = basicClean(text).replaceAll('\u0345', ' ');
  const words: string[] = [];
  for (const m of cleaned.matchAll(CLIP_PATTERN)) {
    let symbols = '';
    for (const b of Buffer.from(m[0], 'utf8')) symbols += BYTES.encode[b];
    words.push(symbols);
  }
  return words;
}

// ---------------------------------------------------------------------------
// File parsing helpers.

function readText(file: string, what: string): string {
  if (!existsSync(file)) {
    throw new FileFormatError(file, `${what} not found at ${file}. Check the path, or point to a diffusers tokenizer/ folder holding vocab.json and merges.txt.`);
  }
  try {
    if (statSync(file).isDirectory()) {
      throw new FileFormatError(file, `${what} path ${file} is a directory, not a file. Pass the file itself.`);
    }
    return new TextDecoder('utf-8', { fatal: true }).decode(readFileSync(file));
  } catch (err) {
    if (err instanceof FileFormatError) throw err;
    throw new FileFormatError(file, `Could not read ${what} ${file} as UTF-8 text (${(err as Error).message}). Re-download the file.`, { cause: err });
  }
}

function parseJson(file: string, text: string, what: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch (err) {
    throw new FileFormatError(file, `${what} ${file} is not valid JSON (${(err as Error).message}). The file is corrupt or truncated; re-download it.`, { cause: err });
  }
}

function parseVocab(file: string, text: string): Map<string, number> {
  const data = parseJson(file, text, 'Vocabulary');
  if (data === null || typeof data !== 'object' || Array.isArray(data)) {
    throw new FileFormatError(file, `Vocabulary ${file} must be a JSON object mapping token strings to ids. Is this the tokenizer's vocab.json?`);
  }
  const vocab = new Map<string, number>();
  for (const [token, id] of Object.entries(data as Record<string, unknown>)) {
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0) {
      throw new FileFormatError(file, `Vocabulary ${file} maps ${JSON.stringify(token)} to ${JSON.stringify(id)}; ids must be non-negative integers. The file is corrupt; re-download it.`);
    }
    vocab.set(token, id);
  }
  if (vocab.size === 0) {
    throw new FileFormatError(file, `Vocabulary ${file} is empty. The file is corrupt; re-download it.`);
  }
  return vocab;
}

/**
 * Parses merge lines. `lines[0]` is the version comment CLIP and transformers
 * skip; a file whose first line is not a `#` comment keeps it as a merge.
 */
function parseMerges(file: string, lines: string[]): Array<[string, string]> {
  const start = lines.length > 0 && lines[0].startsWith('#') ? 1 : 0;
  const merges: Array<[string, string]> = [];
  for (let i = start; i < lines.length && merges.length < CLIP_MAX_MERGES; i++) {
    const line = lines[i].trim();
    if (line.length === 0) {
      // Trailing blank lines are harmless; a blank line in the middle is not.
      if (lines.slice(i + 1).every((l) => l.trim().length === 0)) break;
      throw new FileFormatError(file, `Merges file ${file} has an empty line at line ${i + 1}. The file is corrupt; re-download it.`);
    }
    const parts = line.split(/\s+/);
    if (parts.length !== 2) {
      throw new FileFormatError(file, `Merges file ${file} line ${i + 1} should hold two symbols separated by a space, found ${JSON.stringify(line.slice(0, 80))}. Is this a BPE merges.txt?`);
    }
    merges.push([parts[0], parts[1]]);
  }
  if (merges.length === 0) {
    throw new FileFormatError(file, `Merges file ${file} holds no merges. The file is corrupt or truncated; re-download it.`);
  }
  return merges;
}

function tokenSpec(value: unknown, file: string, key: string): TokenSpec | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value === 'string') return { content: value };
  if (typeof value === 'object' && typeof (value as { content?: unknown }).content === 'string') {
    const v = value as { content: string; lstrip?: unknown; rstrip?: unknown };
    return { content: v.content, lstrip: v.lstrip === true, rstrip: v.rstrip === true };
  }
  throw new FileFormatError(file, `${file}: "${key}" should be a string or an object with a "content" string, found ${JSON.stringify(value)}.`);
}

function specOf(value: string | TokenSpec | undefined, fallback: string): TokenSpec {
  if (value === undefined) return { content: fallback };
  return typeof value === 'string' ? { content: value } : value;
}

// ---------------------------------------------------------------------------

/** Caps the BPE word cache so a long-running process does not grow without bound. */
const MAX_CACHE = 200_000;

export class ClipTokenizer {
  readonly bosToken: string;
  readonly eosToken: string;
  readonly padToken: string;
  readonly unkToken: string;
  readonly bosId: number;
  readonly eosId: number;
  readonly padId: number;
  readonly unkId: number;
  /** Default sequence length of {@link encodeForModel} (77 for SD 1.x). */
  readonly modelMaxLength: number;
  /** Largest id + 1: the number of rows the text encoder's embedding needs. */
  readonly vocabSize: number;
  /** Number of merges in use. */
  readonly mergeCount: number;

  private readonly encoder: Map<string, number>;
  private readonly decoder: Map<number, string>;
  private readonly ranks: Map<string, number>;
  private readonly cache = new Map<string, string[]>();
  /** Tokens split out of the text before BPE, longest first. */
  private readonly splitTokens: TokenSpec[];
  private readonly specialIds: Set<number>;

  private constructor(
    vocab: Map<string, number>,
    merges: ReadonlyArray<readonly [string, string]>,
    options: ClipTokenizerOptions,
    source: string,
  ) {
    this.encoder = vocab;
    this.ranks = new Map();
    for (let i = 0; i < merges.length; i++) {
      const key = merges[i][0] + ' ' + merges[i][1];
      if (!this.ranks.has(key)) this.ranks.set(key, i);
    }
    this.mergeCount = merges.length;

    const specials = new Map<string, TokenSpec>();
    for (const t of options.addedTokens ?? []) {
      if (!vocab.has(t.content)) {
        if (t.id === undefined || !Number.isInteger(t.id) || t.id < 0) {
          throw new FileFormatError(source, `Added token ${JSON.stringify(t.content)} is not in the vocabulary and has no valid id. Fix added_tokens.json.`);
        }
        vocab.set(t.content, t.id);
      }
      specials.set(t.content, t);
    }
    const bos = specOf(options.bosToken, START_OF_TEXT);
    const eos = specOf(options.eosToken, END_OF_TEXT);
    const pad = specOf(options.padToken, END_OF_TEXT);
    const unk = specOf(options.unkToken, END_OF_TEXT);
    const idOf = (spec: TokenSpec, role: string): number => {
      const id = vocab.get(spec.content);
      if (id === undefined) {
        throw new FileFormatError(source, `The ${role} token ${JSON.stringify(spec.content)} is not in the vocabulary. The vocabulary and the tokenizer config do not belong together; check special_tokens_map.json / tokenizer_config.json.`);
      }
      return id;
    };
    this.bosToken = bos.content;
    this.eosToken = eos.content;
    this.padToken = pad.content;
    this.unkToken = unk.content;
    this.bosId = idOf(bos, 'begin-of-text');
    this.eosId = idOf(eos, 'end-of-text');
    this.padId = idOf(pad, 'padding');
    this.unkId = idOf(unk, 'unknown');
    for (const s of [bos, eos, pad, unk]) if (!specials.has(s.content)) specials.set(s.content, s);
    this.splitTokens = [...specials.values()].filter((s) => s.content.length > 0).sort((a, b) => b.content.length - a.content.length);
    this.specialIds = new Set([this.bosId, this.eosId, this.padId, this.unkId]);

    this.decoder = new Map();
    let maxId = -1;
    for (const [token, id] of vocab) {
      this.decoder.set(id, token); // later entries win, like Python's {v: k}
      if (id > maxId) maxId = id;
    }
    this.vocabSize = maxId + 1;

    const maxLen = options.modelMaxLength;
    this.modelMaxLength = maxLen !== undefined && Number.isInteger(maxLen) && maxLen >= 2 && maxLen <= 1_000_000 ? maxLen : CLIP_MAX_LENGTH;

    // CLIP seeds its cache so the literal specials never get `</w>`.
    this.cache.set(START_OF_TEXT, [START_OF_TEXT]);
    this.cache.set(END_OF_TEXT, [END_OF_TEXT]);
  }

  // -- construction ---------------------------------------------------------

  /** A tokenizer from a diffusers/transformers `vocab.json` + `merges.txt` pair. */
  static fromFiles(vocabJsonPath: string, mergesTxtPath: string, options: ClipTokenizerOptions = {}): ClipTokenizer {
    const vocab = parseVocab(vocabJsonPath, readText(vocabJsonPath, 'Vocabulary file (vocab.json)'));
    const mergesText = readText(mergesTxtPath, 'Merges file (merges.txt)');
    const merges = parseMerges(mergesTxtPath, mergesText.split('\n'));
    for (let i = 0; i < merges.length; i++) {
      const merged = merges[i][0] + merges[i][1];
      if (!vocab.has(merged)) {
        throw new FileFormatError(mergesTxtPath, `Merge ${i + 1} (${JSON.stringify(merges[i].join(' '))}) makes ${JSON.stringify(merged)}, which is not in ${vocabJsonPath}. vocab.json and merges.txt are from different tokenizers; use the pair from the same tokenizer/ folder.`);
      }
    }
    return new ClipTokenizer(vocab, merges, options, vocabJsonPath);
  }

  /**
   * A tokenizer from the original CLIP release's `bpe_simple_vocab_16e6.txt.gz`
   * (merges only). The vocabulary is rebuilt as CLIP does: the 256 byte
   * symbols, the same with `</w>`, one token per merge (48,894), then
   * `<|startoftext|>` and `<|endoftext|>`.
   */
  static fromBpeGz(gzPath: string, options: ClipTokenizerOptions = {}): ClipTokenizer {
    if (!existsSync(gzPath)) {
      throw new FileFormatError(gzPath, `BPE merges file not found at ${gzPath}. Point to CLIP's bpe_simple_vocab_16e6.txt.gz.`);
    }
    let text: string;
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(gunzipSync(readFileSync(gzPath)));
    } catch (err) {
      throw new FileFormatError(gzPath, `${gzPath} is not a readable gzip file of UTF-8 text (${(err as Error).message}). The file is corrupt or truncated; re-download bpe_simple_vocab_16e6.txt.gz.`, { cause: err });
    }
    const lines = text.split('\n');
    // The first line is always a header ('"bpe_simple_vocab_16e6.txt#version: 0.2').
    const merges = parseMerges(gzPath, ['#', ...lines.slice(1)]);
    const vocab = new Map<string, number>();
    const tokens: string[] = [...BYTES.order, ...BYTES.order.map((c) => c + WORD_END)];
    for (const [a, b] of merges) tokens.push(a + b);
    tokens.push(START_OF_TEXT, END_OF_TEXT);
    tokens.forEach((t, i) => vocab.set(t, i));
    return new ClipTokenizer(vocab, merges, options, gzPath);
  }

  /**
   * A tokenizer from a diffusers `tokenizer/` folder (or a model folder that
   * has one): `vocab.json` + `merges.txt`, and when present
   * `tokenizer_config.json` / `special_tokens_map.json` (special tokens,
   * `model_max_length`) and `added_tokens.json`.
   */
  static fromDirectory(dir: string): ClipTokenizer {
    if (!existsSync(dir) || !statSync(dir).isDirectory()) {
      throw new FileFormatError(dir, `Tokenizer folder ${dir} does not exist. Point to the model's tokenizer/ folder (it holds vocab.json and merges.txt).`);
    }
    let root = dir;
    if (!existsSync(path.join(root, 'vocab.json')) && existsSync(path.join(root, 'tokenizer', 'vocab.json'))) {
      root = path.join(root, 'tokenizer');
    }
    const options: ClipTokenizerOptions = {};
    const keys = ['bos_token', 'eos_token', 'pad_token', 'unk_token'] as const;
    const optKey = { bos_token: 'bosToken', eos_token: 'eosToken', pad_token: 'padToken', unk_token: 'unkToken' } as const;
    const readObject = (file: string, what: string): Record<string, unknown> | undefined => {
      if (!existsSync(file)) return undefined;
      const data = parseJson(file, readText(file, what), what);
      if (data === null || typeof data !== 'object' || Array.isArray(data)) {
        throw new FileFormatError(file, `${what} ${file} must be a JSON object. The file is corrupt; re-download it.`);
      }
      return data as Record<string, unknown>;
    };

    const config = readObject(path.join(root, 'tokenizer_config.json'), 'Tokenizer config');
    // special_tokens_map.json overrides tokenizer_config.json, as in transformers.
    const map = readObject(path.join(root, 'special_tokens_map.json'), 'Special tokens map');
    for (const [src, file] of [[config, 'tokenizer_config.json'], [map, 'special_tokens_map.json']] as const) {
      if (!src) continue;
      for (const k of keys) {
        const spec = tokenSpec(src[k], path.join(root, file), k);
        if (spec) options[optKey[k]] = spec;
      }
    }
    if (config && typeof config.model_max_length === 'number') options.modelMaxLength = config.model_max_length;

    const added: Array<TokenSpec & { id?: number }> = [];
    const addedFile = path.join(root, 'added_tokens.json');
    const addedData = readObject(addedFile, 'Added tokens');
    if (addedData) {
      for (const [content, id] of Object.entries(addedData)) {
        if (typeof id !== 'number' || !Number.isInteger(id) || id < 0) {
          throw new FileFormatError(addedFile, `${addedFile} maps ${JSON.stringify(content)} to ${JSON.stringify(id)}; ids must be non-negative integers.`);
        }
        added.push({ content, id });
      }
    }
    if (added.length > 0) options.addedTokens = added;
    return ClipTokenizer.fromFiles(path.join(root, 'vocab.json'), path.join(root, 'merges.txt'), options);
  }

  // -- vocabulary -----------------------------------------------------------

  /** The id of a token string (BPE form, e.g. `cat</w>`), or undefined. */
  tokenToId(token: string): number | undefined {
    return this.encoder.get(token);
  }

  /** The token string of an id, or undefined when the id is not in the vocabulary. */
  idToToken(id: number): string | undefined {
    return this.decoder.get(id);
  }

  /** Every token with its id, sorted by id. */
  entries(): Array<[token: string, id: number]> {
    return [...this.decoder.entries()].sort((a, b) => a[0] - b[0]).map(([id, token]) => [token, id]);
  }

  /** The token -> id map (read-only view). */
  vocabulary(): ReadonlyMap<string, number> {
    return this.encoder;
  }

  /** True for the bos/eos/pad/unk ids. */
  isSpecialId(id: number): boolean {
    return this.specialIds.has(id);
  }

  /**
   * Readable text of one token: bytes decoded, `</w>` shown as a trailing
   * space (so `cat</w>` -> `"cat "`, `pho` -> `"pho"`). Partial UTF-8
   * sequences decode to U+FFFD.
   */
  tokenText(id: number): string | undefined {
    const token = this.decoder.get(id);
    if (token === undefined) return undefined;
    if (this.specialIds.has(id)) return token;
    return this.bytesToString(token).replaceAll(WORD_END, ' ');
  }

  // -- encoding -------------------------------------------------------------

  /** BPE token strings of `text` (transformers' `tokenizer.tokenize`). */
  tokenize(text: string): string[] {
    const out: string[] = [];
    for (const piece of this.splitOnSpecials(text)) {
      if (piece.special) out.push(piece.text);
      else this.tokenizePlain(piece.text, out);
    }
    return out;
  }

  /** Token ids of `text`, without bos/eos. */
  encode(text: string): number[] {
    return this.tokenize(text).map((t) => this.encoder.get(t) ?? this.unkId);
  }

  /**
   * Model input as SD pipelines build it: `[bos, ...ids, eos]`, truncated to
   * `maxLength` (eos stays last) and padded with the pad token.
   */
  encodeForModel(text: string, maxLength: number = this.modelMaxLength): ModelInput {
    if (!Number.isInteger(maxLength) || maxLength < 2) {
      throw new RangeError(`maxLength must be an integer >= 2 (room for bos and eos), got ${maxLength}`);
    }
    const ids = this.encode(text);
    const room = maxLength - 2;
    const kept = ids.length > room ? ids.slice(0, room) : ids;
    const droppedIds = ids.length > room ? ids.slice(room) : [];
    const out = new Int32Array(maxLength).fill(this.padId);
    out[0] = this.bosId;
    out.set(kept, 1);
    out[kept.length + 1] = this.eosId;
    const truncated = droppedIds.length > 0;
    return {
      ids: out,
      length: kept.length + 2,
      truncated,
      droppedIds,
      droppedText: truncated ? this.decode(droppedIds, { skipSpecialTokens: true }) : '',
    };
  }

  // -- decoding -------------------------------------------------------------

  /**
   * Text of `ids`: tokens joined, bytes decoded (invalid UTF-8 -> U+FFFD),
   * `</w>` -> space, trimmed. Like transformers without
   * `clean_up_tokenization_spaces`, so punctuation keeps its spaces
   * ("a cat , dog").
   */
  decode(ids: Iterable<number>, options: DecodeOptions = {}): string {
    let tokens = '';
    for (const raw of ids) {
      const id = Number(raw);
      if (options.skipSpecialTokens && this.specialIds.has(id)) continue;
      const token = this.decoder.get(id);
      if (token === undefined) throw new RangeError(`token id ${id} is not in the vocabulary (size ${this.vocabSize})`);
      tokens += token;
    }
    return this.bytesToString(tokens).replaceAll(WORD_END, ' ').trim();
  }

  // -- internals ------------------------------------------------------------

  private bytesToString(symbols: string): string {
    const bytes: number[] = [];
    for (const ch of symbols) {
      const b = BYTES.decode.get(ch);
      if (b !== undefined) {
        bytes.push(b);
      } else {
        // Not a byte symbol (only possible for added tokens): keep as UTF-8.
        for (const x of Buffer.from(ch, 'utf8')) bytes.push(x);
      }
    }
    return Buffer.from(bytes).toString('utf8');
  }

  /** transformers' added-token trie split (exact, case-sensitive, longest match). */
  private splitOnSpecials(text: string): Array<{ text: string; special: boolean }> {
    const pieces: Array<{ text: string; special: boolean; spec?: TokenSpec }> = [];
    let start = 0;
    let i = 0;
    outer: while (i < text.length) {
      for (const spec of this.splitTokens) {
        if (text.startsWith(spec.content, i)) {
          if (i > start) pieces.push({ text: text.slice(start, i), special: false });
          pieces.push({ text: spec.content, special: true, spec });
          i += spec.content.length;
          start = i;
          continue outer;
        }
      }
      i++;
    }
    if (start < text.length) pieces.push({ text: text.slice(start), special: false });
    for (let k = 0; k < pieces.length; k++) {
      const spec = pieces[k].spec;
      if (!spec) continue;
      const right = pieces[k + 1];
      if (spec.rstrip && right && !right.special) right.text = right.text.trimStart();
      const left = pieces[k - 1];
      if (spec.lstrip && left && !left.special) left.text = left.text.trimEnd();
    }
    return pieces.filter((p) => p.text.length > 0);
  }

  private tokenizePlain(text: string, out: string[]): void {
    for (const word of clipWords(text)) for (const t of this.bpe(word)) out.push(t);
  }

  /** BPE of one byte-encoded word; the last symbol carries `</w>`. */
  private bpe(token: string): string[] {
    const cached = this.cache.get(token);
    if (cached) return cached;
    let word: string[] = token.split('');
    word[word.length - 1] += WORD_END;
    while (word.length > 1) {
      let best = -1;
      let bestRank = Infinity;
      for (let i = 0; i < word.length - 1; i++) {
        const rank = this.ranks.get(word[i] + ' ' + word[i + 1]);
        if (rank !== undefined && rank < bestRank) {
          bestRank = rank;
          best = i;
        }
      }
      if (best < 0) break;
      const first = word[best];
      const second = word[best + 1];
      const merged: string[] = word.slice(0, best);
      for (let i = best; i < word.length; ) {
        if (i < word.length - 1 && word[i] === first && word[i + 1] === second) {
          merged.push(first + second);
          i += 2;
        } else {
          merged.push(word[i]);
          i += 1;
        }
      }
      word = merged;
    }
    if (this.cache.size >= MAX_CACHE) {
      this.cache.clear();
      this.cache.set(START_OF_TEXT, [START_OF_TEXT]);
      this.cache.set(END_OF_TEXT, [END_OF_TEXT]);
    }
    this.cache.set(token, word);
    return word;
  }
}
