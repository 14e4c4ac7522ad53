import { mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { trainClipBpe, writeTokenizerFolder, type ClipBpe } from '../core/text/bpe-train.ts';
import { ClipTokenizer, basicClean } from '../core/text/clip-tokenizer.ts';
import { rng } from './helpers/gradcheck.ts';

let scratch = '';
beforeAll(() => {
  scratch = mkdtempSync(path.join(tmpdir(), 'lethe-bpe-train-'));
});
afterAll(() => {
  if (scratch) rmSync(scratch, { recursive: true, force: true });
});

let folderCount = 0;
/** Writes `bpe` to a fresh tokenizer folder and loads it the way SD 1.x tokenizers are loaded. */
function roundTripFolder(bpe: ClipBpe): { dir: string; tok: ClipTokenizer } {
  const dir = path.join(scratch, `tok-${folderCount++}`, 'tokenizer');
  writeTokenizerFolder(dir, bpe, { modelMaxLength: 77 });
  return { dir, tok: ClipTokenizer.fromDirectory(path.dirname(dir)) };
}

/** Normalised text as decode shows it: cleaned, split by the CLIP pattern, pieces joined by spaces. */
function normalised(text: string): string {
  const pattern = /'s|'t|'re|'ve|'m|'ll|'d|\p{L}+|\p{N}|[^\s\p{L}\p{N}]+/giu;
  return [...basicClean(text).matchAll(pattern)].map((m) => m[0]).join(' ');
}

// The classic BPE example: low x5, lower x2, newest x6, widest x3.
const HAND_CORPUS = [
  'low low low', 'Low  LOW', 'lower lower', 'newest newest newest', 'newest newest newest', 'widest widest', 'WIDEST',
];
/**
 * Worked by hand. Initial pair counts: e s 9, s t</w> 9, w e 8, l o 7, n e 6,
 * e w 6, o w</w> 5, w i 3, i d 3, d e 3, o w 2, e r</w> 2. Ties go to the
 * smaller left symbol, then the smaller right symbol.
 */
const HAND_MERGES: [string, string][] = [
  ['e', 's'], //           9 (ties with s t</w>: "e" < "s")
  ['es', 't</w>'], //      9
  ['l', 'o'], //           7
  ['e', 'w'], //           6 (ties n e, w est</w>: "e" < "n" < "w")
  ['ew', 'est</w>'], //    6 ("ew" < "n")
  ['n', 'ewest</w>'], //   6
  ['lo', 'w</w>'], //      5
  ['d', 'est</w>'], //     3 (ties i d, w i)
  ['i', 'dest</w>'], //    3
  ['w', 'idest</w>'], //   3
  ['e', 'r</w>'], //       2 (ties lo w, w e)
  ['lo', 'w'], //          2 (ties w er</w>)
  ['low', 'er</w>'], //    2
];

describe('trainClipBpe on a hand-made corpus', () => {
  it('learns the merges worked out by hand, in order, and stops when no pair repeats', () => {
    const bpe = trainClipBpe(HAND_CORPUS, { vocabSize: 1000 });
    expect(bpe.merges).toEqual(HAND_MERGES);
    expect(bpe.vocab.size).toBe(512 + 13 + 2);
    expect(bpe.vocab.get('es')).toBe(512);
    expect(bpe.vocab.get('est</w>')).toBe(513);
    expect(bpe.vocab.get('newest</w>')).toBe(517);
    expect(bpe.vocab.get('low</w>')).toBe(518);
    expect(bpe.vocab.get('widest</w>')).toBe(521);
    expect(bpe.vocab.get('lower</w>')).toBe(524);
    expect(bpe.vocab.get('<|startoftext|>')).toBe(525);
    expect(bpe.vocab.get('<|endoftext|>')).toBe(526);
  });

  it('stops at vocabSize and honours minFrequency', () => {
    const small = trainClipBpe(HAND_CORPUS, { vocabSize: 512 + 3 + 2 });
    expect(small.merges).toEqual(HAND_MERGES.slice(0, 3));
    expect(small.vocab.get('lo')).toBe(514);
    expect(small.vocab.get('<|startoftext|>')).toBe(515);
    expect(small.vocab.get('<|endoftext|>')).toBe(516);

    // Only pairs seen at least 6 times: the first six merges.
    expect(trainClipBpe(HAND_CORPUS, { vocabSize: 1000, minFrequency: 6 }).merges).toEqual(HAND_MERGES.slice(0, 6));
    // minFrequency 1 also merges pairs seen once.
    const once = trainClipBpe(['ab ab', 'xy'], { vocabSize: 1000, minFrequency: 1 });
    expect(once.merges).toEqual([['a', 'b</w>'], ['x', 'y</w>']]);
    expect(trainClipBpe(['ab ab', 'xy'], { vocabSize: 1000 }).merges).toEqual([['a', 'b</w>']]);
  });

  it('has the CLIP vocabulary layout', () => {
    const bpe = trainClipBpe(HAND_CORPUS, { vocabSize: 1000 });
    const byId = [...bpe.vocab].sort((a, b) => a[1] - b[1]);
    expect(byId.map(([, id]) => id)).toEqual([...Array(527).keys()]);
    // Printable bytes first ('!' .. '~'), then the rest; the same again with </w>.
    expect(byId[0][0]).toBe('!');
    expect(byId[64][0]).toBe('a');
    expect(byId[93][0]).toBe('~');
    expect(byId[188][0]).toBe('Ā'); // byte 0x00 -> U+0100
    expect(byId[220][0]).toBe('Ġ'); // space -> U+0120
    for (let i = 0; i < 256; i++) expect(byId[256 + i][0]).toBe(byId[i][0] + '</w>');
    expect(bpe.vocab.get('a</w>')).toBe(320); // as in SD 1.x ("a" -> 320)
    bpe.merges.forEach(([l, r], i) => expect(byId[512 + i][0]).toBe(l + r));
  });

  it('writes a folder ClipTokenizer reads like an SD 1.x one', () => {
    const bpe = trainClipBpe(HAND_CORPUS, { vocabSize: 1000 });
    const { dir, tok } = roundTripFolder(bpe);
    expect(readdirSync(dir).sort()).toEqual(['merges.txt', 'special_tokens_map.json', 'tokenizer_config.json', 'vocab.json']);
    const mergesTxt = readFileSync(path.join(dir, 'merges.txt'), 'utf8').split('\n');
    expect(mergesTxt[0]).toBe('#version: 0.2');
    expect(mergesTxt.slice(1, 4)).toEqual(['e s', 'es t</w>', 'l o']);
    expect(JSON.parse(readFileSync(path.join(dir, 'tokenizer_config.json'), 'utf8'))).toMatchObject({
      model_max_length: 77,
      tokenizer_class: 'CLIPTokenizer',
    });

    expect(tok.vocabSize).toBe(527);
    expect(tok.mergeCount).toBe(13);
    expect([tok.bosId, tok.eosId, tok.padId, tok.unkId]).toEqual([525, 526, 526, 526]);
    expect(tok.modelMaxLength).toBe(77);
    // Every training word became one token.
    expect(tok.tokenize('Low lower NEWEST widest')).toEqual(['low</w>', 'lower</w>', 'newest</w>', 'widest</w>']);
    expect(tok.encode('low lower newest widest')).toEqual([518, 524, 517, 521]);
    // Partial merges on new words.
    expect(tok.tokenize('lowest slow')).toEqual(['low', 'est</w>', 's', 'low</w>']);

    const input = tok.encodeForModel('low newest');
    expect(input.ids.length).toBe(77);
    expect([...input.ids.slice(0, 4)]).toEqual([525, 518, 517, 526]);
    expect([...input.ids.slice(4)]).toEqual(new Array(73).fill(526));
    expect(input.length).toBe(4);
    expect(input.truncated).toBe(false);
  });
});

// ---------------------------------------------------------------------------

const EMOJI_CAPTIONS = [
  'Grinning face with big eyes 😃',
  'Smiling Face, with Heart-Eyes!',
  'red heart ❤️',
  'thumbs up: medium-dark skin tone 👍🏾',
  "a cat's face with tears of joy",
  'Flag: Côte d’Ivoire 🇨🇮',
  'party popper 🎉 and confetti ball 🎊',
  'face with spiral eyes',
  'keycap: 10',
  'clock at 12:30 🕧',
  'woman’s hat — pink',
  '中文 emoji 字 with  extra   spaces\tand\ttabs',
  'Ünïcödé naïve café crème brûlée',
  'grinning face with smiling eyes',
  'smiling face with smiling eyes and three hearts',
  'cat with wry smile 😼',
  'face savoring food 😋 yum',
  'red apple 🍎 green apple 🍏',
  'A <|endoftext|> inside a caption',
  'hundred points 💯!!!',
];

describe('round trip through the written folder', () => {
  const bpe = trainClipBpe(EMOJI_CAPTIONS, { vocabSize: 700 });

  it('reproduces the normalised text of every training caption without unknown tokens', () => {
    const { tok } = roundTripFolder(bpe);
    for (const caption of EMOJI_CAPTIONS) {
      const ids = tok.encode(caption);
      if (caption.includes('<|endoftext|>')) {
        expect(ids).toContain(tok.eosId);
        expect(tok.decode(ids)).toBe('a <|endoftext|>inside a caption');
        continue;
      }
      expect(ids.every((id) => id < tok.vocabSize - 2), caption).toBe(true);
      expect(tok.decode(ids), caption).toBe(normalised(caption));
    }
    // Worked examples of the normalisation.
    expect(tok.decode(tok.encode('Smiling Face, with Heart-Eyes!'))).toBe('smiling face , with heart - eyes !');
    expect(tok.decode(tok.encode("a cat's face"))).toBe("a cat 's face");
    expect(tok.decode(tok.encode('keycap: 10'))).toBe('keycap : 1 0');
    expect(tok.decode(tok.encode('中文 emoji'))).toBe('中 文 emoji');
  });

  it('tokenizes words never seen, falling back to byte tokens', () => {
    const { tok } = roundTripFolder(bpe);
    const unseen = 'zyzzyva quokka 🦩 Ωmega ñandú';
    const ids = tok.encode(unseen);
    expect(ids.every((id) => id < tok.vocabSize - 2)).toBe(true);
    expect(tok.decode(ids)).toBe('zyzzyva quokka 🦩 ωmega ñandú');
    // 'z', 'q', 'k' never occur in the corpus: single bytes.
    expect(tok.tokenize('zzz')).toEqual(['z', 'z', 'z</w>']);
    expect(tok.encode('q')).toEqual([256 + 80]); // 'q' is byte symbol 80 ('q' - '!')
    // 🦩 is not in the corpus: its leading UTF-8 bytes (F0 9F, shared with
    // the corpus's emoji) may merge, its last bytes stay byte tokens.
    const flamingo = tok.tokenize('🦩');
    expect(flamingo.length).toBeGreaterThan(1);
    expect(tok.tokenToId(flamingo[flamingo.length - 1])).toBeLessThan(512);
    expect(tok.decode(tok.encode('🦩'))).toBe('🦩');
  });

  it('builds model input [bos, ..., eos, pad...] of length 77', () => {
    const { tok } = roundTripFolder(bpe);
    expect(tok.bosId).toBe(bpe.vocab.size - 2);
    expect(tok.eosId).toBe(bpe.vocab.size - 1);
    expect(tok.padId).toBe(tok.eosId);
    for (const caption of EMOJI_CAPTIONS.slice(0, 8)) {
      const ids = tok.encode(caption);
      const input = tok.encodeForModel(caption);
      expect(input.ids.length).toBe(77);
      expect(input.length).toBe(ids.length + 2);
      expect([...input.ids]).toEqual([tok.bosId, ...ids, tok.eosId, ...new Array(75 - ids.length).fill(tok.padId)]);
    }
    const empty = tok.encodeForModel('');
    expect([...empty.ids]).toEqual([tok.bosId, ...new Array(76).fill(tok.eosId)]);
    const long = tok.encodeForModel('quokka '.repeat(100));
    expect(long.truncated).toBe(true);
    expect(long.ids[76]).toBe(tok.eosId);
  });

  it('is deterministic: same corpus (in any order) gives identical files', () => {
    const shuffled = [...EMOJI_CAPTIONS].reverse();
    const dirs = [trainClipBpe(EMOJI_CAPTIONS, { vocabSize: 700 }), trainClipBpe(shuffled, { vocabSize: 700 })].map(
      (b) => roundTripFolder(b).dir,
    );
    for (const name of ['vocab.json', 'merges.txt', 'special_tokens_map.json', 'tokenizer_config.json']) {
      expect(readFileSync(path.join(dirs[0], name))).toEqual(readFileSync(path.join(dirs[1], name)));
    }
  });
});

/** Textbook BPE: recount every pair at every step (the trainer's incremental counts must agree). */
function naiveBpe(texts: string[], merges: number, minFrequency: number): [string, string][] {
  const toSymbols = (w: string): string[] => {
    const chars = [...Buffer.from(w, 'utf8')].map((b) => String.fromCharCode(b >= 0x21 && b <= 0x7e ? b : -1));
    if (chars.some((c) => c.charCodeAt(0) > 0x7e)) throw new Error('naiveBpe takes printable ASCII only');
    chars[chars.length - 1] += '</w>';
    return chars;
  };
  const freq = new Map<string, number>();
  for (const t of texts) for (const w of t.toLowerCase().split(/\s+/).filter(Boolean)) freq.set(w, (freq.get(w) ?? 0) + 1);
  let words = [...freq].map(([w, f]) => ({ s: toSymbols(w), f }));
  const tokens = new Set<string>();
  const out: [string, string][] = [];
  const banned = new Set<string>();
  while (out.length < merges) {
    const counts = new Map<string, number>();
    for (const { s, f } of words) for (let i = 0; i + 1 < s.length; i++) counts.set(s[i] + ' ' + s[i + 1], (counts.get(s[i] + ' ' + s[i + 1]) ?? 0) + f);
    let best: string | undefined;
    for (const [k, c] of counts) {
      if (c < minFrequency || banned.has(k)) continue;
      const [l, r] = k.split(' ');
      const bc = best === undefined ? -1 : (counts.get(best) as number);
      const [bl, br] = best === undefined ? ['', ''] : best.split(' ');
      if (c > bc || (c === bc && (l < bl || (l === bl && r < br)))) best = k;
    }
    if (best === undefined) break;
    const [l, r] = best.split(' ');
    if (tokens.has(l + r)) {
      banned.add(best);
      continue;
    }
    tokens.add(l + r);
    out.push([l, r]);
    words = words.map(({ s, f }) => {
      const ns: string[] = [];
      for (let i = 0; i < s.length; ) {
        if (i + 1 < s.length && s[i] === l && s[i + 1] === r) {
          ns.push(l + r);
          i += 2;
        } else ns.push(s[i++]);
      }
      return { s: ns, f };
    });
  }
  return out;
}

describe('incremental pair counts', () => {
  it('agree with textbook BPE on random corpora (repeats like "aaaa" included)', () => {
    for (const seed of [1, 2, 3, 4, 5]) {
      const r = rng(seed);
      const alphabet = seed % 2 ? 'ab' : 'abcde';
      const texts: string[] = [];
      for (let i = 0; i < 300; i++) {
        const words: string[] = [];
        for (let k = 0; k < 1 + Math.floor(r() * 5); k++) {
          let w = '';
          for (let c = 0; c < 1 + Math.floor(r() * 8); c++) w += alphabet[Math.floor(r() * alphabet.length)];
          words.push(w);
        }
        texts.push(words.join(' '));
      }
      for (const minFrequency of [1, 2, 5]) {
        const expected = naiveBpe(texts, 300, minFrequency);
        expect(expected.length).toBeGreaterThan(10);
        expect(trainClipBpe(texts, { vocabSize: 512 + 300 + 2, minFrequency }).merges, `seed ${seed}`).toEqual(expected);
      }
    }
  });
});

describe('writeTokenizerFolder', () => {
  it('replaces the files of an existing folder and leaves no temp files', () => {
    const dir = path.join(scratch, 'existing');
    mkdirSync(dir);
    writeFileSync(path.join(dir, 'vocab.json'), '{"old": 0}');
    writeFileSync(path.join(dir, 'README.md'), 'keep me');
    const bpe = trainClipBpe(HAND_CORPUS, { vocabSize: 1000 });
    writeTokenizerFolder(dir, bpe);
    expect(readdirSync(dir).sort()).toEqual(['README.md', 'merges.txt', 'special_tokens_map.json', 'tokenizer_config.json', 'vocab.json']);
    expect(ClipTokenizer.fromDirectory(dir).vocabSize).toBe(527);
    expect(readdirSync(scratch).filter((n) => n.includes('.tmp-'))).toEqual([]);
  });

  it('refuses tokenizers it could not write in the CLIP layout', () => {
    const dir = path.join(scratch, 'refused');
    const empty = trainClipBpe(['abc'], { vocabSize: 1000 });
    expect(empty.merges).toEqual([]);
    expect(() => writeTokenizerFolder(dir, empty)).toThrow(/no merges/);
    const bpe = trainClipBpe(HAND_CORPUS, { vocabSize: 1000 });
    const broken = { vocab: new Map(bpe.vocab), merges: bpe.merges.slice(1) };
    expect(() => writeTokenizerFolder(dir, broken)).toThrow(/CLIP layout/);
    expect(readdirSync(scratch).filter((n) => n.startsWith('refused'))).toEqual([]);
    expect(() => trainClipBpe(HAND_CORPUS, { vocabSize: 514 })).toThrow(RangeError);
    expect(() => trainClipBpe(HAND_CORPUS, { vocabSize: 49409 })).toThrow(RangeError);
    expect(() => trainClipBpe(HAND_CORPUS, { vocabSize: 600, minFrequency: 0 })).toThrow(RangeError);
  });
});

// ---------------------------------------------------------------------------

/** ~50k emoji-style captions: real emoji-name words, a skewed lexicon of invented words, emoji, digits, punctuation. */
function syntheticCaptions(count: number, seed: number): string[] {
  const r = rng(seed);
  const pick = <T,>(xs: readonly T[]): T => xs[Math.floor(r() * xs.length)];
  const onsets = ['b', 'br', 'c', 'ch', 'd', 'f', 'fl', 'g', 'gr', 'h', 'j', 'k', 'l', 'm', 'n', 'p', 'pl', 'qu', 'r', 's', 'sh', 'sp', 't', 'th', 'tr', 'v', 'w', 'z', ''];
  const nuclei = ['a', 'e', 'i', 'o', 'u', 'ai', 'ea', 'oo', 'ou', 'y'];
  const codas = ['', '', 'n', 'r', 's', 'l', 'ng', 'st', 'ck', 'm', 't'];
  const lexicon: string[] = [];
  for (let i = 0; i < 30000; i++) {
    let w = '';
    const syllables = 1 + Math.floor(r() * 4);
    for (let s = 0; s < syllables; s++) w += pick(onsets) + pick(nuclei) + pick(codas);
    lexicon.push(w);
  }
  const word = (): string => lexicon[Math.floor(Math.pow(r(), 2.5) * lexicon.length)];
  const known = ['face', 'with', 'smiling', 'grinning', 'heart', 'eyes', 'hand', 'cat', 'red', 'blue', 'green', 'yellow', 'light', 'medium', 'dark', 'skin', 'tone', 'flag', 'man', 'woman', 'person', 'and', 'of', 'the', 'a'];
  const emoji = ['😀', '😂', '🥲', '😍', '🙃', '👍', '👍🏽', '❤️', '🔥', '🎉', '🐱', '🍎', '🌈', '⭐', '🇯🇵', '👩‍🚀'];
  const punct = [',', ':', '!', '-', "'s", '.', ''];
  const captions: string[] = [];
  for (let i = 0; i < count; i++) {
    const n = 3 + Math.floor(r() * 9);
    const parts: string[] = [];
    for (let k = 0; k < n; k++) {
      const u = r();
      if (u < 0.4) parts.push(pick(known));
      else if (u < 0.9) parts.push(word() + (r() < 0.1 ? pick(punct) : ''));
      else if (u < 0.96) parts.push(pick(emoji));
      else parts.push(String(Math.floor(r() * 100)));
    }
    captions.push(r() < 0.2 ? parts.join(' ').toUpperCase() : parts.join(' '));
  }
  return captions;
}

describe('training speed', () => {
  it('learns 4000 merges from ~50k captions in under 20 s', () => {
    const captions = syntheticCaptions(50_000, 1234);
    const t0 = performance.now();
    const bpe = trainClipBpe(captions, { vocabSize: 512 + 4000 + 2 });
    const seconds = (performance.now() - t0) / 1000;
    console.log(`trainClipBpe: ${captions.length} captions, ${bpe.merges.length} merges in ${seconds.toFixed(2)} s`);
    expect(bpe.merges.length).toBe(4000);
    expect(bpe.vocab.size).toBe(4514);
    expect(seconds).toBeLessThan(20);

    const { tok } = roundTripFolder(bpe);
    expect(tok.vocabSize).toBe(4514);
    let tokens = 0;
    let bytes = 0;
    for (const caption of captions.slice(0, 2000)) {
      const ids = tok.encode(caption);
      expect(ids.every((id) => id < 4512)).toBe(true);
      expect(tok.decode(ids)).toBe(normalised(caption));
      tokens += ids.length;
      bytes += Buffer.byteLength(normalised(caption).replaceAll(' ', ''));
    }
    // BPE compresses: far fewer tokens than bytes.
    expect(tokens).toBeLessThan(bytes / 2.5);
  });
});
