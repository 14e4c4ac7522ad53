/**
 * `npm run serve`: the studio in a browser. Starts the app core over a data
 * folder and the web transport on 127.0.0.1, prints the URL with its token,
 * and on SIGINT/SIGTERM stops the running image between steps, records what
 * was finished and closes the history before exiting.
 *
 *   tsx electron/serve.ts [--host 127.0.0.1] [--port 4417] [--data-dir ~/.lethe] [--provider auto]
 */
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { LetheError } from '../core/errors.ts';
import type { ProviderName } from '../core/runtime/session.ts';
import { createAppCore } from './app-core.ts';
import { startWebServer, webImageUrl } from './web-server.ts';

const PROVIDERS: readonly (ProviderName | 'auto')[] = ['auto', 'cpu', 'cuda', 'dml', 'coreml', 'webgpu'];

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      host: { type: 'string', default: '127.0.0.1' },
      port: { type: 'string', default: '4417' },
      'data-dir': { type: 'string', default: process.env.LETHE_DATA_DIR ?? path.join(os.homedir(), '.lethe') },
      provider: { type: 'string', default: 'auto' },
      'allow-host': { type: 'string', multiple: true, default: [] },
    },
  });
  const port = Number(values.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new LetheError('usage', `--port must be a port number (0 for any free one), got '${values.port}'`);
  const provider = values.provider as ProviderName | 'auto';
  if (!PROVIDERS.includes(provider)) throw new LetheError('usage', `--provider must be one of ${PROVIDERS.join(', ')}, got '${values.provider}'`);
  const dataDir = path.resolve(values['data-dir']);

  const core = createAppCore({ dataDir, transport: 'web', imageUrl: webImageUrl, provider });
  const server = await startWebServer({ core, imagesDir: path.join(dataDir, 'images'), host: values.host, port, allowedHosts: values['allow-host'] }).catch(async (e: unknown) => {
    await core.close();
    throw e;
  });
  process.stdout.write(`Lethe studio: ${server.url}\n`);
  process.stderr.write(`data folder: ${dataDir}\n`);

  let stopping = false;
  const stop = (signal: NodeJS.Signals): void => {
    if (stopping) {
      process.stderr.write(`${signal} again: exiting now\n`);
      process.exit(130);
    }
    stopping = true;
    process.stderr.write(`${signal}: stopping the running job and closing the history...\n`);
    Promise.all([server.close(), core.close()]).then(
      () => process.exit(0),
      (e: unknown) => {
        process.stderr.write(`error while shutting down: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
        process.exit(1);
      },
    );
  };
  process.on('SIGINT', stop);
  process.on('SIGTERM', stop);
}

main().catch((e: unknown) => {
  process.stderr.write(`lethe serve: ${e instanceof LetheError ? e.message : e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exit(1);
});
