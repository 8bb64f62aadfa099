#!/usr/bin/env node
// Screenshot of a study in the cxr OHIF viewer with the AI's DICOM SR drawn on the image.
//
//   node orthanc/viewer/screenshot.mjs --url http://127.0.0.1:3000 --study UID \
//        --user U --password P --out viewer.png [--before-out before.png] [--sr-series 9901]
//
// Drives Debian's /usr/bin/chromium (headless) with puppeteer-core: answers the basic-auth
// challenge (page.authenticate), opens /viewer?StudyInstanceUIDs=UID, dismisses the
// investigational-use banner and the onboarding tour if they show, waits for the image,
// optionally saves a screenshot before the SR is loaded (--before-out), then loads the SR the
// way a user does in OHIF 3.13: double-click the SR series in the study browser. OHIF opens it
// in its SR viewport (the referenced image with the SR's ROIs drawn read-only: the selected
// measurement in green, the others in yellow, dashed) and asks "Do you want to continue
// tracking measurements for this study?"; the script answers No, which keeps that read-only
// display and removes the prompt from over the image. It waits until the SR's graphics are in
// the viewport's SVG layer, takes the screenshot and prints JSON to stdout: what was drawn
// (annotation UIDs = the SR's Tracking Unique Identifiers, colours, outline points in
// screenshot pixels), the viewport rectangle, the SR measurement count, console errors.
// Exits 1 with a message on stderr when something is missing.
//
// Two more modes, for the other outputs:
//
//   --mode series --modality OT   open the study's series of that modality (our Secondary
//                                 Capture: Modality OT) by double-clicking its thumbnail, wait
//                                 until it is rendered and screenshot it. The study's first
//                                 image may stay black (OHIF 3.13 renders a CR whose Pixel
//                                 Spacing is 0\0 black): its fill is reported, not required.
//   --mode seg                    open the SEG (double-click), answer Yes to OHIF's "open this
//                                 segmentation?" prompt, wait until the labelmap is drawn over
//                                 the referenced image, and screenshot it; --before-out is the
//                                 referenced image before the SEG was loaded.

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';

const USAGE =
  'usage: node screenshot.mjs --url URL --study UID --user U --password P --out FILE.png ' +
  '[--before-out FILE.png] [--sr-series NUMBER] [--mode sr|series|seg] [--modality OT] ' +
  '[--chromium PATH] [--timeout SECONDS] [--width W --height H]';

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
        out: { type: 'string' },
        'before-out': { type: 'string' },
        'sr-series': { type: 'string' },
        mode: { type: 'string', default: 'sr' },
        modality: { type: 'string', default: 'OT' },
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
  for (const name of ['url', 'study', 'user', 'password', 'out']) {
    if (!values[name]) {
      fail(`--${name} is required\n${USAGE}`);
    }
  }
  if (!['sr', 'series', 'seg'].includes(values.mode)) {
    fail(`--mode must be sr, series or seg\n${USAGE}`);
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

/** Share of non-black pixels in the viewport's 2D canvas (cornerstone copies each frame there). */
function canvasFill(page) {
  return page.evaluate(() => {
    const canvas = document.querySelector('.cornerstone-canvas');
    if (!canvas || !canvas.width || !canvas.height) {
      return 0;
    }
    const { data } = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
    let lit = 0;
    let total = 0;
    for (let i = 0; i < data.length; i += 4 * 97) {
      total += 1;
      if (data[i] + data[i + 1] + data[i + 2] > 30) {
        lit += 1;
      }
    }
    return lit / total;
  });
}

/** Share of sampled viewport-canvas pixels that are coloured (max - min channel > 60): a grey
 * radiograph and OHIF's dark interface have none; a segmentation overlay or burned-in graphics do. */
function canvasColour(page) {
  return page.evaluate(() => {
    const canvas = document.querySelector('.cornerstone-canvas');
    if (!canvas || !canvas.width || !canvas.height) {
      return 0;
    }
    const { data } = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
    let coloured = 0;
    let total = 0;
    for (let i = 0; i < data.length; i += 4 * 31) {
      total += 1;
      const [r, g, b] = [data[i], data[i + 1], data[i + 2]];
      if (Math.max(r, g, b) - Math.min(r, g, b) > 60) {
        coloured += 1;
      }
    }
    return coloured / total;
  });
}

/** The study browser's thumbnail of the first series of `modality` (and series number, if given). */
async function findThumbnail(page, modality, seriesNumber, timeoutMs, report) {
  return waitFor(
    async () => {
      for (const thumb of await page.$$('[data-cy^="study-browser-thumbnail"]')) {
        const label = await thumb.$eval('[data-cy="series-modality-label"]', el => el.textContent.trim()).catch(() => null);
        const series = await thumb.evaluate(el => el.getAttribute('data-series'));
        if (label === modality && (!seriesNumber || series === seriesNumber)) {
          report.opened_series_number = series;
          return thumb;
        }
      }
      return null;
    },
    timeoutMs,
    `a ${modality} series${seriesNumber ? ` numbered ${seriesNumber}` : ''} in the study browser`,
  );
}

/** What the SR drawing put in the viewport's SVG layer, in page (= screenshot) pixels. */
function drawnAnnotations(page) {
  return page.evaluate(() => {
    const svg = document.querySelector('svg.svg-layer');
    if (!svg) {
      return { outlines: [], labels: [] };
    }
    const rect = svg.getBoundingClientRect();
    const outlines = [...svg.querySelectorAll('polyline, polygon')].map(el => ({
      color: el.getAttribute('stroke'),
      dashed: Boolean(el.getAttribute('stroke-dasharray')),
      points: (el.getAttribute('points').match(/-?[\d.]+(?:e-?\d+)?/g) || [])
        .map(Number)
        .reduce((acc, v, i, all) => (i % 2 ? acc : [...acc, [rect.left + v, rect.top + all[i + 1]]]), []),
    }));
    const labels = [...svg.querySelectorAll('g[data-annotation-uid]')].map(g => ({
      uid: g.getAttribute('data-annotation-uid'),
      color: g.querySelector('text')?.getAttribute('fill') || null,
      text: [...g.querySelectorAll('tspan')].map(t => t.textContent),
    }));
    return { outlines, labels };
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

/** Measurements OHIF parsed from the SR in the viewport (diagnostic; OHIF exposes `window.services`). */
function srMeasurements(page) {
  return page.evaluate(() => {
    try {
      const sets = window.services.displaySetService.getActiveDisplaySets().filter(ds => ds.Modality === 'SR');
      return sets.map(ds => ({
        series_number: ds.SeriesNumber,
        loaded: Boolean(ds.isLoaded),
        rehydratable: Boolean(ds.isRehydratable),
        measurements: (ds.measurements || []).map(m => ({
          tracking_uid: m.TrackingUniqueIdentifier,
          tracking_id: m.TrackingIdentifier,
          graphic_type: m.graphicType || null,
          on_image: Boolean(m.loaded),
        })),
      }));
    } catch {
      return null;
    }
  });
}

/** --mode series / seg: open the output series and wait for it to be drawn (see the header). */
async function openOtherOutput(page, opts, report) {
  const modality = opts.mode === 'seg' ? 'SEG' : opts.modality;
  const thumb = await findThumbnail(page, modality, null, Math.min(opts.timeoutMs, 30000), report);
  await thumb.click({ count: 2 });
  if (opts.mode === 'seg') {
    // OHIF asks whether to open the segmentation; Yes loads it as a labelmap over the image.
    const yes = await waitFor(() => page.$('[data-cy="yes-hydrate-btn"]'), 20000, "OHIF's prompt to open the SEG").catch(err => {
      report.hydrate_prompt_error = err.message;
      return null;
    });
    if (yes) {
      report.hydrate_prompt = true;
      await yes.click();
    }
    const coloured = async () => (await canvasFill(page)) > 0.05 && (await canvasColour(page)) > 0.01;
    let drawn = await waitFor(coloured, 15000, 'the segmentation overlay').catch(() => false);
    if (!drawn) {
      report.render_nudge = 'mouse';
      const r = await viewportRect(page);
      await page.mouse.move(r.x + r.width / 2, r.y + r.height / 2);
      await page.mouse.move(r.x + r.width / 2 + 15, r.y + r.height / 2 + 10, { steps: 5 });
      await waitFor(coloured, 10000, 'the segmentation overlay to be drawn on the image');
    }
  } else {
    await waitFor(async () => (await canvasFill(page)) > 0.05, opts.timeoutMs, `the ${modality} series to be rendered`);
  }
  await sleep(1000); // let the last render settle
  await dismissOverlays(page, report);
  report.viewport = await viewportRect(page);
  report.image_fill = Number((await canvasFill(page)).toFixed(3));
  report.image_colour = Number((await canvasColour(page)).toFixed(4));
  report.segmentations = await page.evaluate(() => {
    try {
      return window.services.segmentationService.getSegmentations().map(s => ({
        id: s.segmentationId,
        label: s.label,
        segments: Object.values(s.segments || {}).filter(Boolean).map(x => ({ index: x.segmentIndex, label: x.label })),
      }));
    } catch {
      return null;
    }
  });
  if (report.image_fill < 0.05) {
    fail(`the viewport is black after opening the ${modality} series`);
  }
  await page.screenshot({ path: opts.out });
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
    screenshot: path.resolve(opts.out),
    before_screenshot: opts['before-out'] ? path.resolve(opts['before-out']) : null,
    banner_dismissed: false,
    tour_dismissed: false,
    hydrate_prompt: false,
    render_nudge: null,
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

    // The image: a canvas with something on it, and OHIF's window/level overlay. In the series
    // mode the study's first image may stay black (a Pixel Spacing of 0\0): the overlay suffices.
    const blackFirstAllowed = opts.mode === 'series';
    await waitFor(
      async () => {
        await dismissOverlays(page, report);
        const lit = blackFirstAllowed || (await canvasFill(page)) > 0.05;
        return lit && (await page.$('[data-cy="viewport-overlay-bottom-left"] span'));
      },
      opts.timeoutMs,
      'the image to be rendered in the viewport',
    );
    await sleep(blackFirstAllowed ? 3000 : 500); // a black first image: give it time to be drawn, if it ever is
    await dismissOverlays(page, report);
    report.viewport = await viewportRect(page);
    report.image_fill = Number((await canvasFill(page)).toFixed(3));
    report.first_image_fill = report.image_fill;
    report.first_image_colour = Number((await canvasColour(page)).toFixed(4));
    if (opts['before-out']) {
      await page.screenshot({ path: opts['before-out'] });
      report.before = await drawnAnnotations(page);
    }
    if (opts.mode !== 'sr') {
      await openOtherOutput(page, opts, report);
      return report;
    }

    // The SR series in the study browser.
    const srThumb = await waitFor(
      async () => {
        for (const thumb of await page.$$('[data-cy^="study-browser-thumbnail"]')) {
          const modality = await thumb.$eval('[data-cy="series-modality-label"]', el => el.textContent.trim()).catch(() => null);
          const series = await thumb.evaluate(el => el.getAttribute('data-series'));
          if (modality === 'SR' && (!opts['sr-series'] || series === opts['sr-series'])) {
            report.sr_series_number = series;
            return thumb;
          }
        }
        return null;
      },
      Math.min(opts.timeoutMs, 30000),
      `an SR series${opts['sr-series'] ? ` numbered ${opts['sr-series']}` : ''} in the study browser`,
    );
    await srThumb.click({ count: 2 });

    // OHIF's hydrate prompt: "No" keeps the read-only SR display (and clears the image).
    const noButton = await waitFor(() => page.$('[data-cy="no-hydrate-btn"]'), 20000, 'the SR viewport (hydrate prompt)').catch(err => {
      report.hydrate_prompt_error = err.message;
      return null;
    });
    if (noButton) {
      report.hydrate_prompt = true;
      await noButton.click();
    }

    // The SR graphics in the viewport's SVG layer. OHIF 3.13 sometimes leaves the first draw of
    // the SR annotations to the next render of the viewport (any mouse move does it for a user):
    // wait, then move the mouse over the image, then, as a last resort, ask cornerstone to render.
    const hasGraphics = async () => (await drawnAnnotations(page)).outlines.length > 0;
    let drawn = await waitFor(hasGraphics, 8000, 'SR graphics').catch(() => false);
    if (!drawn) {
      report.render_nudge = 'mouse';
      const r = await viewportRect(page);
      await page.mouse.move(r.x + r.width / 2, r.y + r.height / 2);
      await page.mouse.move(r.x + r.width / 2 + 15, r.y + r.height / 2 + 10, { steps: 5 });
      drawn = await waitFor(hasGraphics, 4000, 'SR graphics').catch(() => false);
    }
    if (!drawn) {
      report.render_nudge = 'viewport.render';
      await page.evaluate(() => window.cornerstone.getEnabledElements().forEach(e => e.viewport.render()));
      await waitFor(hasGraphics, 5000, 'the SR graphics (boxes) to be drawn on the image');
    }
    await sleep(700); // let the text boxes settle after the last render
    await dismissOverlays(page, report);
    report.viewport = await viewportRect(page);
    report.image_fill = Number((await canvasFill(page)).toFixed(3));
    report.drawn = await drawnAnnotations(page);
    report.sr = await srMeasurements(page);
    report.measurements_drawn = report.drawn.labels.length;
    if (report.image_fill < 0.05) {
      fail('the viewport is black after loading the SR');
    }
    await page.screenshot({ path: opts.out });
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

try {
  const report = await run(getOptions());
  process.stdout.write(JSON.stringify(report, null, 2) + '\n');
} catch (err) {
  process.stderr.write(`screenshot.mjs: ${err instanceof Failure ? err.message : err.stack || err}\n`);
  process.exit(1);
}
