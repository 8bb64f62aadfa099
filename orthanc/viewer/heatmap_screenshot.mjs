#!/usr/bin/env node
// Screenshot of a study in the cxr OHIF viewer with one of the AI's heatmap SEGs over the image.
//
//   node orthanc/viewer/heatmap_screenshot.mjs --url http://127.0.0.1:3000 --study UID \
//        --user U --password P --series 9905 --out heatmap.png [--before-out before.png]
//
// Drives Debian's /usr/bin/chromium (headless) with puppeteer-core, as screenshot.mjs does:
// answers the basic-auth challenge, opens /viewer?StudyInstanceUIDs=UID, dismisses the
// investigational-use banner and the onboarding tour if they show, waits for the image,
// optionally saves a screenshot before the heatmap is loaded (--before-out), then loads the
// heatmap the way a user does in OHIF 3.13: double-click the SEG series numbered --series in the
// study browser (9905: opacity probability, 9906: attribution) and answer Yes to "Do you want to
// open this Segmentation?". OHIF then shows the referenced image with the SEG's segments (the
// heatmap's value bands) filled in their recommended display colours. The script waits until
// the segmentation is loaded and its colours are on the viewport's canvas, takes the screenshot
// and prints JSON to stdout: the viewport rectangle, the rectangles of OHIF's texts and icons
// over it, the segmentation OHIF loaded (label, segments with their colours), coloured-pixel
// counts, console errors. Exits 1 with a message on
// stderr when something is missing.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';

const USAGE =
  'usage: node heatmap_screenshot.mjs --url URL --study UID --user U --password P --series NUMBER --out FILE.png ' +
  '[--before-out FILE.png] [--chromium PATH] [--timeout SECONDS] [--width W --height H]';

const CHROMIUM_FLAGS = [
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

class Failure extends Error {}

function fail(message) {
  throw new Failure(message);
}

const sleep = ms => new Promise(resolve => setTimeout(resolve, ms));

function getOptions() {
  let values;
  try {
    ({ values } = parseArgs({
      options: {
        url: { type: 'string' },
        study: { type: 'string' },
        user: { type: 'string' },
        password: { type: 'string' },
        series: { type: 'string' },
        out: { type: 'string' },
        'before-out': { type: 'string' },
        chromium: { type: 'string', default: process.env.CHROMIUM_PATH || '/usr/bin/chromium' },
        timeout: { type: 'string', default: '90' },
        width: { type: 'string', default: '1600' },
        height: { type: 'string', default: '1000' },
        help: { type: 'boolean', short: 'h' },
      },
    }));
  } catch (err) {
    fail(`${err.message}\n${USAGE}`);
  }
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  for (const name of ['url', 'study', 'user', 'password', 'series', 'out']) {
    if (!values[name]) {
      fail(`--${name} is required\n${USAGE}`);
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
async function waitFor(fn, timeoutMs, what, intervalMs = 250) {
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
async function dismissOverlays(page, seen) {
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

/** Lit and coloured shares of the viewport's 2D canvas (every 97th pixel). */
function canvasStats(page) {
  return page.evaluate(() => {
    const canvas = document.querySelector('.cornerstone-canvas');
    if (!canvas || !canvas.width || !canvas.height) {
      return { lit: 0, coloured: 0 };
    }
    const { data } = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
    let lit = 0;
    let coloured = 0;
    let total = 0;
    for (let i = 0; i < data.length; i += 4 * 97) {
      total += 1;
      const [r, g, b] = [data[i], data[i + 1], data[i + 2]];
      if (r + g + b > 30) {
        lit += 1;
      }
      if (Math.max(Math.abs(r - g), Math.abs(g - b), Math.abs(r - b)) > 40) {
        coloured += 1;
      }
    }
    return { lit: lit / total, coloured: coloured / total };
  });
}

function viewportRect(page) {
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
function overlayRects(page) {
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

/** The segmentations OHIF holds (label, segments and their display colours in the viewport). */
function segmentations(page) {
  return page.evaluate(() => {
    try {
      const service = window.services.segmentationService;
      const viewportId = window.services.viewportGridService.getActiveViewportId();
      return service.getSegmentations().map(s => ({
        id: s.segmentationId,
        label: s.label,
        representations: Object.keys(s.representationData || {}),
        segments: Object.values(s.segments || {})
          .filter(Boolean)
          .map(seg => {
            let color = null;
            try {
              color = service.getSegmentColor(viewportId, s.segmentationId, seg.segmentIndex);
            } catch {
              color = null;
            }
            return { index: seg.segmentIndex, label: seg.label, color };
          }),
      }));
    } catch (err) {
      return { error: String(err) };
    }
  });
}

async function run(opts) {
  if (!fs.existsSync(opts.chromium)) {
    fail(`no Chromium at ${opts.chromium}: apt-get install chromium (or pass --chromium PATH)`);
  }
  const puppeteer = await loadPuppeteer();
  const started = Date.now();
  const userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'cxr-viewer-chromium-'));
  const report = {
    url: null,
    study: opts.study,
    series: opts.series,
    screenshot: path.resolve(opts.out),
    before_screenshot: opts['before-out'] ? path.resolve(opts['before-out']) : null,
    banner_dismissed: false,
    tour_dismissed: false,
    hydrate_prompt: false,
    console_errors: [],
    page_errors: [],
    failed_requests: [],
  };
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

    await waitFor(
      async () => {
        await dismissOverlays(page, report);
        return (await canvasStats(page)).lit > 0.05 && (await page.$('[data-cy="viewport-overlay-bottom-left"] span'));
      },
      opts.timeoutMs,
      'the image to be rendered in the viewport',
    );
    await sleep(500);
    await dismissOverlays(page, report);
    report.before = { viewport: await viewportRect(page), overlays: await overlayRects(page), ...(await canvasStats(page)) };
    if (opts['before-out']) {
      await page.screenshot({ path: opts['before-out'] });
    }

    // The heatmap SEG series in the study browser.
    const thumb = await waitFor(
      async () => {
        for (const candidate of await page.$$('[data-cy^="study-browser-thumbnail"]')) {
          const series = await candidate.evaluate(el => el.getAttribute('data-series'));
          const modality = await candidate.$eval('[data-cy="series-modality-label"]', el => el.textContent.trim()).catch(() => null);
          if (series === opts.series && (modality === null || modality === 'SEG')) {
            return candidate;
          }
        }
        return null;
      },
      Math.min(opts.timeoutMs, 30000),
      `a SEG series numbered ${opts.series} in the study browser`,
    );
    await thumb.click({ count: 2 });
    const yes = await waitFor(() => page.$('[data-cy="yes-hydrate-btn"]'), 20000, 'the "open this Segmentation?" prompt').catch(err => {
      report.hydrate_prompt_error = err.message;
      return null;
    });
    if (yes) {
      report.hydrate_prompt = true;
      await yes.click();
    }

    // Loaded: OHIF holds the segmentation and its colours are on the canvas. A first draw may
    // wait for the next render of the viewport (a mouse move does it for a user).
    await waitFor(async () => {
      const held = await segmentations(page);
      return Array.isArray(held) && held.length > 0 && held[0].segments.length > 0;
    }, opts.timeoutMs, 'the heatmap segmentation to be loaded');
    const coloured = async () => (await canvasStats(page)).coloured > 0.001;
    let drawn = await waitFor(coloured, 10000, 'heatmap colours').catch(() => false);
    if (!drawn) {
      report.render_nudge = 'mouse';
      const r = await viewportRect(page);
      await page.mouse.move(r.x + r.width / 2, r.y + r.height / 2);
      await page.mouse.move(r.x + r.width / 2 + 15, r.y + r.height / 2 + 10, { steps: 5 });
      drawn = await waitFor(coloured, 5000, 'heatmap colours').catch(() => false);
    }
    if (!drawn) {
      report.render_nudge = 'viewport.render';
      await page.evaluate(() => window.cornerstone.getEnabledElements().forEach(e => e.viewport.render()));
      await waitFor(coloured, 5000, 'the heatmap colours on the image');
    }
    await sleep(1000); // let the fill settle after the last render
    await dismissOverlays(page, report);
    // Move the pointer off the viewport so no hover highlight is in the screenshot.
    await page.mouse.move(2, opts.height - 2);
    await sleep(300);
    report.viewport = await viewportRect(page);
    report.overlays = await overlayRects(page);
    Object.assign(report, await canvasStats(page));
    report.segmentations = await segmentations(page);
    if (report.lit < 0.05) {
      fail('the viewport is black after loading the heatmap');
    }
    await page.screenshot({ path: opts.out });
  } catch (err) {
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

try {
  const report = await run(getOptions());
  process.stdout.write(JSON.stringify(report, null, 2) + '\n');
} catch (err) {
  process.stderr.write(`heatmap_screenshot.mjs: ${err instanceof Failure ? err.message : err.stack || err}\n`);
  process.exit(1);
}
