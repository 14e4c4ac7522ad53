/**
 * The emoji image sets lethe-mini is trained on, pinned, and how a rebuild
 * gets them: `npm pack` of the pinned version into a cache folder, checked
 * against the pinned integrity, then extracted (only the metadata and the
 * 64 px images). Nothing here runs when Lethe itself runs, and the packages
 * are never dependencies of Lethe.
 */
import { execFile } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { extractTarGz } from './tar.ts';

export type EmojiSet = 'google' | 'twitter';
export const EMOJI_SETS: readonly EmojiSet[] = ['google', 'twitter'];

export interface SourcePackage {
  name: string;
  version: string;
  /** The registry's dist.integrity for that version; a fetched tarball must match it. */
  integrity: string;
}

/** Pinned sources: emoji-data 16.0.0 (Noto Emoji v2.048, Twemoji fork v16.0.1). */
export const SOURCE_PACKAGES: Readonly<Record<EmojiSet, SourcePackage>> = {
  google: {
    name: 'emoji-datasource-google',
    version: '16.0.0',
    integrity: 'sha512-ZRexfzs7MVoLnmzZmNsO4TKhnAJp5D++Vm6PpUpH/jEQQlemp3l88CjZ+DoZ2faM9R4QxZkOPJCoT8DlPhfQ3A==',
  },
  twitter: {
    name: 'emoji-datasource-twitter',
    version: '16.0.0',
    integrity: 'sha512-7F+uCuHH+7Qnrc15P5tnbvKkg9E6tlzi4MnT2uW1RlN4pLYTza6cP/dstIfSDMtpjFLWuZewWg8jBbuL2eyELQ==',
  },
};

export const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));
/** Git-ignored cache for fetched tarballs, extracted trees and the default output. */
export const DEFAULT_CACHE_DIR = path.join(REPO_ROOT, 'build', '.cache', 'mini');

/** Fetches `spec` ("name@version") as a tarball into `dest`; returns the tarball's path. */
export type PackFn = (spec: string, dest: string) => Promise<string>;

const execFileAsync = promisify(execFile);

/** `npm pack <spec> --pack-destination <dest>`: the registry's tarball, byte for byte. */
export const npmPack: PackFn = async (spec, dest) => {
  const { stdout } = await execFileAsync('npm', ['pack', spec, '--pack-destination', dest, '--json'], {
    maxBuffer: 64 * 1024 * 1024,
    shell: process.platform === 'win32',
  });
  const info = JSON.parse(stdout) as { filename: string }[];
  if (!Array.isArray(info) || typeof info[0]?.filename !== 'string') throw new Error(`npm pack ${spec}: unexpected output ${stdout.slice(0, 200)}`);
  return path.join(dest, info[0].filename);
};

export interface EnsureOptions {
  cacheDir?: string;
  pack?: PackFn;
  log?: (line: string) => void;
}

/** Files of a package that the builder reads; the sheets and other sizes stay in the tarball. */
export function keepPath(set: EmojiSet, archivePath: string): boolean {
  return (
    ['package/emoji.json', 'package/package.json', 'package/LICENSE', 'package/README.md'].includes(archivePath) ||
    (archivePath.startsWith(`package/img/${set}/64/`) && archivePath.endsWith('.png'))
  );
}

/**
 * The folder holding `emoji.json` and `img/<set>/64/` for a set, from the
 * cache when it is there, else fetched and extracted (once).
 */
export async function ensureSource(set: EmojiSet, o: EnsureOptions = {}): Promise<string> {
  const pkg = SOURCE_PACKAGES[set];
  const cacheDir = path.resolve(o.cacheDir ?? DEFAULT_CACHE_DIR);
  const base = `${pkg.name}-${pkg.version}`;
  const tree = path.join(cacheDir, base);
  const marker = path.join(tree, '.complete');
  if (existsSync(marker)) return path.join(tree, 'package');

  mkdirSync(cacheDir, { recursive: true });
  const tgz = path.join(cacheDir, `${base}.tgz`);
  if (!existsSync(tgz) || integrityOf(tgz) !== pkg.integrity) {
    rmSync(tgz, { force: true });
    o.log?.(`fetching ${pkg.name}@${pkg.version} with npm pack into ${cacheDir}`);
    const got = await (o.pack ?? npmPack)(`${pkg.name}@${pkg.version}`, cacheDir);
    if (path.resolve(got) !== tgz) renameSync(got, tgz);
    const integrity = integrityOf(tgz);
    if (integrity !== pkg.integrity) {
      rmSync(tgz, { force: true });
      throw new Error(`${pkg.name}@${pkg.version}: tarball integrity ${integrity} does not match the pinned ${pkg.integrity}`);
    }
  }

  o.log?.(`extracting ${path.basename(tgz)}`);
  const tmp = `${tree}.tmp-${process.pid}`;
  rmSync(tmp, { recursive: true, force: true });
  try {
    const n = extractTarGz(tgz, tmp, (p) => keepPath(set, p));
    if (!existsSync(path.join(tmp, 'package', 'emoji.json'))) throw new Error(`${tgz}: no package/emoji.json in the tarball`);
    writeFileSync(path.join(tmp, '.complete'), `${pkg.name}@${pkg.version} ${pkg.integrity}\n${n} files\n`);
    rmSync(tree, { recursive: true, force: true });
    renameSync(tmp, tree);
  } catch (e) {
    rmSync(tmp, { recursive: true, force: true });
    throw e;
  }
  return path.join(tree, 'package');
}

export function integrityOf(file: string): string {
  return `sha512-${createHash('sha512').update(readFileSync(file)).digest('base64')}`;
}
