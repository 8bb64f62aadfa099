// What screenshot.mjs and heatmap_screenshot.mjs share: their common options, Debian's
// /usr/bin/chromium (headless) driven by puppeteer-core with a throw-away profile, the OHIF page
// of one study opened behind the basic-auth challenge (page.authenticate) with its console
// errors, page errors and failed requests collected into the report, the investigational-use
// banner and the onboarding tour dismissed, polling, the viewport's rectangle and the rectangles
// of OHIF's texts and icons over it, a screenshot of the page when something fails, and the
// JSON-on-stdout / message-on-stderr exit.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';

export const CHROMIUM_FLAGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--enable-unsafe-swiftshader',
];

/** An expected failure: its message (on stderr) says what is missing. */
export class Failure extends Error {}

export function fail(message) {
  throw new Failure(message);
}

export const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));

// The options both scripts take; each adds its own (`extra`) and names the required ones.
const COMMON_OPTIONS = {
  url: { type: 'string' },
  study: { type: 'string' },
  user: { type: 'string' },
  password: { type: 'string' },
  out: { type: 'string' },
  'before-out': { type: 'string' },
  chromium: { type: 'string', default: process.env.CHROMIUM_PATH || '/usr/bin/chromium' },
  timeout: { type: 'string', default: '90' },
  width: { type: 'string', default: '1600' },
  height: { type: 'string', default: '1000' },
  help: { type: 'boolean', short: 'h' },
};

/** The command line: common options plus `extra`; prints `usage` for --help, fails without a
 * `required` one. Adds timeoutMs, numeric width and height, and the URL without trailing /. */
export function getOptions(usage, extra, required) {
  let values;
  try {
    ({ values } = parseArgs({ options: { ...COMMON_OPTIONS, ...extra } }));
  } catch (err) {
    fail(`${err.message}\n${usage}`);
  }
  if (values.help) {
    console.log(usage);
    process.exit(0);
  }
  for (const name of required) {
    if (!values[name]) {
      fail(`--${name} is required\n${usage}`);
    }
  }
  return {
    ...values,
    url: values.url.replace(/\/+$/, ''),
    timeoutMs: Number(values.timeout) * 1000,
    width: Number(values.width),
    height: Number(values.height),
  };
}

async function loadPuppeteer() {
  try {
    return (await import('puppeteer-core')).default;
  } catch {
    fail('puppeteer-core is not installed: run `npm ci --prefix orthanc/viewer`');
  }
}

/** Poll `fn` (async, returns a truthy value when done) until `timeoutMs`. */
export async function waitFor(fn, timeoutMs, what, intervalMs = 250) {
  const deadline = Date.now() + timeoutMs;
  let lastError;
  while (Date.now() < deadline) {
    try {
      const value = await fn();
      if (value) {
        return value;
      }
    } catch (err) {
      lastError = err;
    }
    await sleep(intervalMs);
  }
  fail(`timed out after ${Math.round(timeoutMs / 1000)} s waiting for ${what}` + (lastError ? ` (${lastError.message})` : ''));
}

/** Close the investigational-use banner and the onboarding tour if either is showing. */
export async function dismissOverlays(page, seen) {
  const banner = await page.$('[data-cy="confirm-and-hide-button"]');
  if (banner) {
    await banner.click();
    seen.banner_dismissed = true;
  }
  if (await page.$('.shepherd-element')) {
    await page.keyboard.press('Escape');
    await sleep(200);
    const cancel = await page.$('.shepherd-cancel-icon');
    if (cancel) {
      await cancel.click();
    }
    seen.tour_dismissed = true;
  }
}

/** The viewport canvas's rectangle in page (= screenshot) pixels, or null. */
export function viewportRect(page) {
  return page.evaluate(() => {
    const canvas = document.querySelector('.cornerstone-canvas');
    if (!canvas) {
      return null;
    }
    const r = canvas.getBoundingClientRect();
    return { x: Math.round(r.left), y: Math.round(r.top), width: Math.round(r.width), height: Math.round(r.height) };
  });
}

/** Rectangles of the texts and icons OHIF draws over the viewport (dates, window/level, markers). */
export function overlayRects(page) {
  return page.evaluate(() => {
    const canvas = document.querySelector('.cornerstone-canvas');
    if (!canvas) {
      return [];
    }
    const vp = canvas.getBoundingClientRect();
    const rects = [];
    for (const el of document.querySelectorAll('span, div, p, svg, button, i')) {
      if (el.closest('svg.svg-layer') || el.classList.contains('cornerstone-canvas')) {
        continue;
      }
      const isLeaf = el.tagName === 'svg' || (el.childElementCount === 0 && el.textContent.trim());
      if (!isLeaf) {
        continue;
      }
      const r = el.getBoundingClientRect();
      if (r.width === 0 || r.height === 0 || r.width > vp.width / 2 || r.height > vp.height / 2) {
        continue;
      }
      if (r.right < vp.left || r.left > vp.right || r.bottom < vp.top || r.top > vp.bottom) {
        continue;
      }
      rects.push({ x: Math.floor(r.left), y: Math.floor(r.top), width: Math.ceil(r.width), height: Math.ceil(r.height) });
    }
    return rects;
  });
}

/** The report's common fields (`extra` after the study), filled in while the page runs. */
export function newReport(opts, extra = {}) {
  return {
    url: null,
    study: opts.study,
    ...extra,
    screenshot: path.resolve(opts.out),
    before_screenshot: opts['before-out'] ? path.resolve(opts['before-out']) : null,
    banner_dismissed: false,
    tour_dismissed: false,
    hydrate_prompt: false,
    console_errors: [],
    page_errors: [],
    failed_requests: [],
  };
}

/** Open the study in OHIF in a fresh headless Chromium and run `body(page)`. On a failure, a
 * screenshot of the page goes next to --out (`-failed.png`) and the page's errors are added to
 * the message; `report.seconds` is the time taken, and the browser and its profile are gone. */
export async function withStudyPage(opts, report, body) {
  if (!fs.existsSync(opts.chromium)) {
    fail(`no Chromium at ${opts.chromium}: apt-get install chromium (or pass --chromium PATH)`);
  }
  const puppeteer = await loadPuppeteer();
  const started = Date.now();
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'cxr-viewer-chromium-'));
  const browser = await puppeteer.launch({
    executablePath: opts.chromium,
    headless: true,
    args: [...CHROMIUM_FLAGS, `--window-size=${opts.width},${opts.height}`],
    userDataDir,
    defaultViewport: { width: opts.width, height: opts.height, deviceScaleFactor: 1 },
  });
  let page;
  try {
    page = await browser.newPage();
    page.setDefaultTimeout(opts.timeoutMs);
    page.on('console', msg => {
      if (msg.type() === 'error') {
        report.console_errors.push(msg.text().slice(0, 500));
      }
    });
    page.on('pageerror', err => report.page_errors.push(String(err.message || err).slice(0, 500)));
    page.on('requestfailed', req => report.failed_requests.push(`${req.failure()?.errorText} ${req.url().slice(0, 200)}`));
    page.on('response', res => {
      if (res.status() >= 400 && res.status() !== 401) {
        report.failed_requests.push(`${res.status()} ${res.url().slice(0, 200)}`);
      }
    });
    await page.authenticate({ username: opts.user, password: opts.password });

    report.url = `${opts.url}/viewer?StudyInstanceUIDs=${encodeURIComponent(opts.study)}`;
    const response = await page.goto(report.url, { waitUntil: 'networkidle2', timeout: opts.timeoutMs });
    if (!response || !response.ok()) {
      fail(`GET ${report.url} answered ${response ? response.status() : 'nothing'}` + (response?.status() === 401 ? ' (wrong user or password?)' : ''));
    }
    await body(page);
  } catch (err) {
    // Keep what the browser showed, and say what went wrong in the page.
    const failedShot = opts.out.replace(/(\.png)?$/i, '-failed.png');
    const saved = page ? await page.screenshot({ path: failedShot }).then(() => true).catch(() => false) : false;
    const context = [
      saved ? `screenshot of the failure: ${failedShot}` : null,
      ...report.page_errors.map(e => `page error: ${e}`),
      ...report.console_errors.slice(0, 10).map(e => `console error: ${e}`),
      ...report.failed_requests.slice(0, 10).map(e => `request: ${e}`),
    ].filter(Boolean);
    if (err instanceof Failure && context.length) {
      err.message += '\n  ' + context.join('\n  ');
    }
    throw err;
  } finally {
    report.seconds = Number(((Date.now() - started) / 1000).toFixed(1));
    await browser.close().catch(() => {});
    fs.rmSync(userDataDir, { recursive: true, force: true });
  }
  return report;
}

/** Run `run()` and print its report as JSON, or the failure on stderr (exit status 1). */
export async function main(name, run) {
  try {
    const report = await run();
    process.stdout.write(JSON.stringify(report, null, 2) + '\n');
  } catch (err) {
    process.stderr.write(`${name}: ${err instanceof Failure ? err.message : err.stack || err}\n`);
    process.exit(1);
  }
}
