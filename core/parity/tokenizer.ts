/**
 * The `tokenizer` case: strings in cases.json -> BPE tokens, ids, and SD-style
 * padded ids, compared exactly. The vocabulary files are looked up in the
 * case folder, then in ../../data/clip/ of a shared/ tree; their sha256 must
 * match the ones the case names.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { FileFormatError } from '../errors.ts';
import { ClipTokenizer } from '../text/clip-tokenizer.ts';
import type { FixtureCase, OutputReport } from './fixture.ts';

interface TokenizerCase {
  text: string;
  ids: number[];
  tokens: string[];
  sd_ids: number[];
}

function vocabularyDir(c: FixtureCase): string {
  const candidates = [c.dir, path.resolve(c.dir, '../../../data/clip'), path.resolve(c.dir, '../../data/clip')];
  const dir = candidates.find((d) => existsSync(path.join(d, 'vocab.json')) && existsSync(path.join(d, 'merges.txt')));
  if (!dir) throw new FileFormatError(c.dir, `no vocab.json + merges.txt next to ${c.dir} or in shared/data/clip; put the tokenizer files in the case folder`);
  const want = (c.json.config.vocabulary_files_sha256 ?? {}) as Record<string, string>;
  for (const f of ['vocab.json', 'merges.txt']) {
    const sha = createHash('sha256').update(readFileSync(path.join(dir, f))).digest('hex');
    if (want[f] && want[f] !== sha) throw new FileFormatError(path.join(dir, f), `${f} in ${dir} is not the vocabulary this case was made with (sha256 differs)`);
  }
  return dir;
}

export function runTokenizerCase(c: FixtureCase): OutputReport[] {
  const dir = vocabularyDir(c);
  const tok = ClipTokenizer.fromFiles(path.join(dir, 'vocab.json'), path.join(dir, 'merges.txt'));
  const { cases } = JSON.parse(readFileSync(path.join(c.dir, 'cases.json'), 'utf8')) as { cases: TokenizerCase[] };
  const mismatches: Record<'ids' | 'tokens' | 'sd_ids', string[]> = { ids: [], tokens: [], sd_ids: [] };
  for (const k of cases) {
    const ids = [tok.bosId, ...tok.encode(k.text), tok.eosId];
    if (ids.join(' ') !== k.ids.join(' ')) mismatches.ids.push(JSON.stringify(k.text));
    if (tok.tokenize(k.text).join(' ') !== k.tokens.join(' ')) mismatches.tokens.push(JSON.stringify(k.text));
    if (Array.from(tok.encodeForModel(k.text, 77).ids).join(' ') !== k.sd_ids.join(' ')) mismatches.sd_ids.push(JSON.stringify(k.text));
  }
  return (['ids', 'tokens', 'sd_ids'] as const).map((name) => {
    const bad = mismatches[name];
    return {
      name,
      pass: bad.length === 0,
      maxAbsError: bad.length,
      maxRelError: bad.length / cases.length,
      tolerance: 'exact',
      worstRatio: bad.length ? Infinity : 0,
      ...(bad.length ? { message: `${bad.length}/${cases.length} strings differ: ${bad.slice(0, 3).join(', ')}` } : {}),
    };
  });
}
