/**
 * A minimal reader for gzip-compressed tar archives (what `npm pack` writes):
 * ustar headers with the prefix field, pax `path` records and GNU long names.
 * Regular files only; links, devices and the like are skipped. Nothing is
 * written outside the destination folder.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { gunzipSync } from 'node:zlib';

const BLOCK = 512;

export interface TarEntry {
  /** Path inside the archive, '/'-separated, without a leading './'. */
  path: string;
  type: 'file' | 'directory' | 'other';
  data: Uint8Array;
}

/** Entries of an uncompressed tar archive, in archive order. */
export function* readTar(bytes: Uint8Array, source = 'archive'): Generator<TarEntry> {
  let offset = 0;
  let longName: string | null = null;
  let paxPath: string | null = null;
  while (offset + BLOCK <= bytes.length) {
    const header = bytes.subarray(offset, offset + BLOCK);
    if (header.every((b) => b === 0)) return; // end-of-archive marker
    checkHeader(header, offset, source);
    const size = readSize(header, offset, source);
    const type = String.fromCharCode(header[156] || 0x30);
    const dataStart = offset + BLOCK;
    if (dataStart + size > bytes.length) throw new Error(`${source}: truncated tar entry at byte ${offset}`);
    const data = bytes.subarray(dataStart, dataStart + size);
    offset = dataStart + Math.ceil(size / BLOCK) * BLOCK;

    if (type === 'L') {
      longName = cString(data);
      continue;
    }
    if (type === 'x') {
      paxPath = paxRecords(data).get('path') ?? paxPath;
      continue;
    }
    if (type === 'g') continue; // global pax header: nothing we use

    const prefix = cString(header.subarray(345, 500));
    const name = cString(header.subarray(0, 100));
    const full = paxPath ?? longName ?? (prefix ? `${prefix}/${name}` : name);
    longName = null;
    paxPath = null;
    yield {
      path: full.replace(/^\.\//, ''),
      type: type === '0' || type === '7' ? 'file' : type === '5' ? 'directory' : 'other',
      data,
    };
  }
  throw new Error(`${source}: tar archive ends without its end-of-archive marker (truncated download?)`);
}

/**
 * Extracts the regular files of a .tgz whose archive path passes `keep` into
 * `dest`. Returns the number of files written.
 */
export function extractTarGz(file: string, dest: string, keep: (archivePath: string) => boolean): number {
  const bytes = gunzipSync(readFileSync(file));
  const root = path.resolve(dest);
  let count = 0;
  for (const entry of readTar(bytes, file)) {
    if (entry.type !== 'file' || !keep(entry.path)) continue;
    const target = safeJoin(root, entry.path, file);
    mkdirSync(path.dirname(target), { recursive: true });
    writeFileSync(target, entry.data);
    count++;
  }
  return count;
}

function safeJoin(root: string, archivePath: string, source: string): string {
  const parts = archivePath.split('/').filter((p) => p !== '' && p !== '.');
  if (archivePath.startsWith('/') || parts.some((p) => p === '..' || p.includes('\\') || p.includes(':'))) {
    throw new Error(`${source}: refusing to extract unsafe path '${archivePath}'`);
  }
  return path.join(root, ...parts);
}

function cString(b: Uint8Array): string {
  const end = b.indexOf(0);
  return Buffer.from(b.subarray(0, end < 0 ? b.length : end)).toString('utf8');
}

function readSize(header: Uint8Array, offset: number, source: string): number {
  const field = header.subarray(124, 136);
  if (field[0] & 0x80) {
    // base-256 (GNU) for sizes of 8 GiB and more
    let v = 0;
    for (let i = 1; i < field.length; i++) v = v * 256 + field[i];
    return v;
  }
  const text = cString(field).trim();
  const v = text === '' ? 0 : parseInt(text, 8);
  if (!Number.isSafeInteger(v) || v < 0) throw new Error(`${source}: bad tar size field at byte ${offset}`);
  return v;
}

function checkHeader(header: Uint8Array, offset: number, source: string): void {
  let sum = 0;
  for (let i = 0; i < BLOCK; i++) sum += i >= 148 && i < 156 ? 0x20 : header[i];
  const stored = parseInt(cString(header.subarray(148, 156)).trim(), 8);
  if (stored !== sum) throw new Error(`${source}: tar header checksum mismatch at byte ${offset}; the archive is corrupt`);
}

/** pax extended header: records "LEN key=value\n". */
function paxRecords(data: Uint8Array): Map<string, string> {
  const out = new Map<string, string>();
  const buf = Buffer.from(data);
  let at = 0;
  while (at < buf.length) {
    const space = buf.indexOf(0x20, at);
    if (space < 0) break;
    const len = parseInt(buf.toString('ascii', at, space), 10);
    if (!Number.isSafeInteger(len) || len <= 0) break;
    const record = buf.toString('utf8', space + 1, at + len - 1);
    const eq = record.indexOf('=');
    if (eq > 0) out.set(record.slice(0, eq), record.slice(eq + 1));
    at += len;
  }
  return out;
}
