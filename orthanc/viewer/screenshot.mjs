#!/usr/bin/env node
// Screenshot of a study in the cxr OHIF viewer with the AI's DICOM SR drawn on the image.
//
//   node orthanc/viewer/screenshot.mjs --url http://127.0.0.1:3000 --study UID \
//        --user U --password P --out viewer.png [--before-out before.png] [--sr-series 9901]
//
// Drives Debian's /usr/bin/chromium (headless) with puppeteer-core (ohif_page.mjs): answers the
// basic-auth challenge (page.authenticate), opens /viewer?StudyInstanceUIDs=UID, dismisses the
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

import { dismissOverlays, fail, getOptions, main, newReport, sleep, viewportRect, waitFor, withStudyPage } from './ohif_page.mjs';

const USAGE =
  'usage: node screenshot.mjs --url URL --study UID --user U --password P --out FILE.png ' +
  '[--before-out FILE.png] [--sr-series NUMBER] [--mode sr|series|seg] [--modality OT] ' +
  '[--chromium PATH] [--timeout SECONDS] [--width W --height H]';

// Options besides the common ones of ohif_page.mjs (url, study, user, password, out, before-out,
// chromium, timeout, width, height).
const OPTIONS = {
  'sr-series': { type: 'string' },
  mode: { type: 'string', default: 'sr' },
  modality: { type: 'string', default: 'OT' },
};

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
  const report = newReport(opts, { render_nudge: null });
  return withStudyPage(opts, report, async page => {
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
      return;
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
  });
}

await main('screenshot.mjs', () => run(getOptions(USAGE, OPTIONS, ['url', 'study', 'user', 'password', 'out'])));
