#!/usr/bin/env node
// Screenshot of a study in the cxr OHIF viewer with one of the AI's heatmap SEGs over the image.
//
//   node orthanc/viewer/heatmap_screenshot.mjs --url http://127.0.0.1:3000 --study UID \
//        --user U --password P --series 9905 --out heatmap.png [--before-out before.png]
//
// Drives Debian's /usr/bin/chromium (headless) with puppeteer-core through ohif_page.mjs, as
// screenshot.mjs does: answers the basic-auth challenge, opens /viewer?StudyInstanceUIDs=UID,
// dismisses the investigational-use banner and the onboarding tour if they show, waits for the image,
// optionally saves a screenshot before the heatmap is loaded (--before-out), then loads the
// heatmap the way a user does in OHIF 3.13: double-click the SEG series numbered --series in the
// study browser (9905: opacity probability, 9906: attribution) and answer Yes to "Do you want to
// open this Segmentation?". OHIF then shows the referenced image with the SEG's segments (the
// heatmap's value bands) filled in their recommended display colours. The script waits until
// the segmentation is loaded and its colours are on the viewport's canvas, takes the screenshot
// and prints JSON to stdout: the viewport rectangle, the rectangles of OHIF's texts and icons
// over it, the segmentation OHIF loaded (label, segments with their colours), coloured-pixel
// counts, console errors. Exits 1 with a message on stderr when something is missing.

import {
  dismissOverlays,
  fail,
  getOptions,
  main,
  newReport,
  overlayRects,
  sleep,
  viewportRect,
  waitFor,
  withStudyPage,
} from './ohif_page.mjs';

const USAGE =
  'usage: node heatmap_screenshot.mjs --url URL --study UID --user U --password P --series NUMBER --out FILE.png ' +
  '[--before-out FILE.png] [--chromium PATH] [--timeout SECONDS] [--width W --height H]';

// Options besides the common ones of ohif_page.mjs (url, study, user, password, out, before-out,
// chromium, timeout, width, height).
const OPTIONS = { series: { type: 'string' } };

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
  const report = newReport(opts, { series: opts.series });
  return withStudyPage(opts, report, async page => {
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
  });
}

await main('heatmap_screenshot.mjs', () => run(getOptions(USAGE, OPTIONS, ['url', 'study', 'user', 'password', 'series', 'out'])));
