/**
 * End to end: the real studio server (`electron/serve.ts`, web mode) with a
 * real SD 1.x model (the small one built from the shared fixtures), driven in
 * Debian's Chromium through playwright-core. Screenshots go to
 * test-artifacts/e2e/.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { writeDiffusersFolder } from '../helpers/model-dirs.ts';
import { hasShared } from '../helpers/shared.ts';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));
const CHROMIUM = process.env.LETHE_CHROMIUM ?? '/usr/bin/chromium';
const ARTIFACTS = path.join(ROOT, 'test-artifacts', 'e2e');
const haveBrowser = existsSync(CHROMIUM);
const haveRenderer = existsSync(path.join(ROOT, 'dist', 'renderer', 'index.html'));

function startServer(dataDir: string): Promise<{ child: ChildProcess; url: string }> {
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'electron', 'serve.ts'), '--port', '0', '--data-dir', dataDir, '--provider', 'cpu'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'] });
  return new Promise((resolve, reject) => {
    let out = '';
    const timer = setTimeout(() => reject(new Error(`server did not start: ${out}`)), 60_000);
    const onData = (d: Buffer) => {
      out += d.toString();
      const m = /(http:\/\/127\.0\.0\.1:\d+\/\?token=[0-9a-f]+)/.exec(out);
      if (m) {
        clearTimeout(timer);
        resolve({ child, url: m[1] });
      }
    };
    child.stdout!.on('data', onData);
    child.stderr!.on('data', onData);
    child.once('exit', (code) => reject(new Error(`server exited (${code}): ${out}`)));
  });
}

async function shot(page: Page, name: string): Promise<void> {
  await page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`), fullPage: true });
}

/** Every image in the locator has loaded real pixels. */
async function imagesLoaded(page: Page, testid: string): Promise<number[]> {
  return page.$$eval(`[data-testid="${testid}"]`, (imgs: unknown[]) => imgs.map((img) => (img as { naturalWidth: number }).naturalWidth));
}

describe.skipIf(!hasShared || !haveBrowser || !haveRenderer)('studio in Chromium (web mode)', () => {
  let tmp = '';
  let server: { child: ChildProcess; url: string };
  let browser: Browser;
  let page: Page;

  beforeAll(async () => {
    mkdirSync(ARTIFACTS, { recursive: true });
    tmp = mkdtempSync(path.join(os.tmpdir(), 'lethe-e2e-'));
    writeDiffusersFolder(path.join(tmp, 'tiny-a'));
    writeDiffusersFolder(path.join(tmp, 'tiny-b'));
    server = await startServer(path.join(tmp, 'data'));
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update'],
    });
    page = await browser.newPage({ viewport: { width: 1360, height: 900 } });
  }, 120_000);

  afterAll(async () => {
    await browser?.close();
    server?.child.kill('SIGTERM');
    rmSync(tmp, { recursive: true, force: true });
  });

  it('opens the studio and adds models by path, showing validation errors in words', async () => {
    await page.goto(server.url);
    await page.getByTestId('nav-models').click();
    await page.getByTestId('model-path').fill(path.join(tmp, 'no-such-model'));
    await page.getByTestId('model-add').click();
    await expect.poll(() => page.getByTestId('model-error').textContent()).toMatch(/not found/);
    for (const name of ['tiny-a', 'tiny-b']) {
      await page.getByTestId('model-path').fill(path.join(tmp, name));
      await page.getByTestId('model-add').click();
      await page.getByTestId('model-item').filter({ hasText: name }).waitFor();
    }
    expect(await page.getByTestId('model-item').count()).toBe(2);
    await shot(page, '01-models');
  });

  it('generates with the default model and shows the images', async () => {
    await page.getByTestId('nav-playground').click();
    await page.getByTestId('prompt').fill('a photo of a cat');
    await page.getByTestId('seed-count').fill('2');
    await page.getByTestId('seed-base').fill('7');
    await page.getByTestId('steps').fill('4');
    await page.getByTestId('width').fill('16');
    await page.getByTestId('height').fill('16');
    await page.getByTestId('prompt').press('Control+Enter');
    await expect.poll(async () => (await imagesLoaded(page, 'gallery-image')).filter((w) => w === 16).length, { timeout: 60_000 }).toBe(2);
    await shot(page, '02-playground');
  });

  it('runs an A/B grid: two models side by side over prompts x seeds', async () => {
    await page.getByTestId('mode-ab').click();
    await page.getByTestId('ab-model-a').selectOption({ label: 'tiny-a' });
    await page.getByTestId('ab-model-b').selectOption({ label: 'tiny-b' });
    // Choosing model A resets the size to its native one; small images keep the test fast.
    await page.getByTestId('width').fill('16');
    await page.getByTestId('height').fill('16');
    await page.getByTestId('ab-prompts').fill('a photo of a cat\nan astronaut riding a horse');
    await page.getByTestId('seed-count').fill('2');
    await page.getByTestId('generate').click();
    await expect.poll(async () => (await imagesLoaded(page, 'ab-image')).filter((w) => w === 16).length, { timeout: 90_000 }).toBe(8);
    expect(await page.getByTestId('ab-row').count()).toBe(2);
    expect(await page.getByTestId('ab-cell').count()).toBe(4);
    await shot(page, '03-ab-grid');
  });

  it('after a reload the history lists every image and reopens its parameters', async () => {
    await page.reload();
    await page.getByTestId('nav-history').click();
    await expect.poll(() => page.getByTestId('history-item').count(), { timeout: 20_000 }).toBe(10);
    await page.getByTestId('history-search').fill('astronaut');
    await expect.poll(() => page.getByTestId('history-item').count(), { timeout: 20_000 }).toBe(4);
    await shot(page, '04-history');
    await page.getByTestId('history-reopen').first().click();
    await expect.poll(() => page.getByTestId('prompt').or(page.getByTestId('ab-prompts')).first().inputValue()).toMatch(/astronaut/);
    await shot(page, '05-reopened');
  });
});
