/**
 * The `lethe` command.
 *   lethe generate [--model <dir|file>] --prompt "..." [--negative ...] [--seed N] [--steps N]
 *                  [--guidance G] [--size WxH] [--out file.png]
 *   lethe dev parity <fixture-dir>... [--json]
 */
import { existsSync, readdirSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { LetheError } from './errors.ts';
import { runParity, type ParityResult } from './parity/run.ts';

const USAGE = `usage:
  lethe generate [--model <dir|file>] --prompt "..." [--negative "..."] [--seed N] [--steps N]
                 [--guidance G] [--size WxH] [--count N] [--out file.png] [--provider cpu|auto|...]
                 (without --model: the built-in lethe-mini)
  lethe dev parity <fixture-dir>... [--json]   (a folder of case folders runs each of them)`;

function fmt(x: number): string {
  return Number.isFinite(x) ? x.toExponential(2) : String(x);
}

async function parity(args: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args, options: { json: { type: 'boolean' } }, allowPositionals: true });
  if (positionals.length === 0) throw new LetheError('usage', `lethe dev parity: name a fixture directory\n${USAGE}`);
  const missing = positionals.filter((d) => !existsSync(d));
  if (missing.length) throw new LetheError('usage', `no such directory: ${missing.join(', ')}`);
  const dirs = positionals.flatMap((d) =>
    existsSync(path.join(d, 'fixture.json'))
      ? [d]
      : readdirSync(d, { withFileTypes: true })
          .filter((e) => e.isDirectory() && existsSync(path.join(d, e.name, 'fixture.json')))
          .map((e) => path.join(d, e.name)),
  );
  if (dirs.length === 0) throw new LetheError('usage', `no fixture.json in ${positionals.join(', ')}`);
  const results: ParityResult[] = [];
  for (const dir of dirs) {
    const r = await runParity(dir);
    results.push(r);
    if (!values.json) {
      process.stdout.write(`${r.pass ? 'PASS' : 'FAIL'} ${r.name} (${r.component}, ${r.seconds.toFixed(1)} s)\n`);
      for (const o of r.outputs) {
        const tol = o.tolerance === 'exact' ? 'exact' : `rtol ${fmt(o.tolerance.rtol)} atol ${fmt(o.tolerance.atol)}`;
        process.stdout.write(`  ${o.pass ? 'ok  ' : 'FAIL'} ${o.name}: max abs ${fmt(o.maxAbsError)}, max rel ${fmt(o.maxRelError)}, ${tol}, worst/allowed ${fmt(o.worstRatio)}${o.message ? ` (${o.message})` : ''}\n`);
      }
    }
  }
  if (values.json) process.stdout.write(JSON.stringify(results, null, 1) + '\n');
  return results.every((r) => r.pass) ? 0 : 1;
}

export async function main(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (rest.includes('--help') || rest.includes('-h')) {
    process.stdout.write(`${USAGE}\n`);
    return 0;
  }
  if (cmd === 'dev' && rest[0] === 'parity') return parity(rest.slice(1));
  if (cmd === 'generate') return (await import('./generate-cli.ts')).generate(rest);
  process.stderr.write(`${USAGE}\n`);
  return cmd === undefined || cmd === '--help' || cmd === 'help' ? 0 : 2;
}

try {
  process.exitCode = await main(process.argv.slice(2));
} catch (e) {
  if (e instanceof LetheError) {
    process.stderr.write(`lethe: ${e.message}\n`);
    process.exitCode = 2;
  } else if (e instanceof TypeError && String((e as { code?: string }).code).startsWith('ERR_PARSE_ARGS')) {
    process.stderr.write(`lethe: ${e.message}\n${USAGE}\n`);
    process.exitCode = 2;
  } else {
    throw e;
  }
}
