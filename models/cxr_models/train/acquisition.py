"""Acquisition jitter: make training images look like radiographs as they reach us from hospitals.

Real chest radiographs arrive after a chain the phantom only partly imitates: detector blur and
quantum noise, collimation edges, vendor processing (CR-style unsharp masking, histogram
equalisation, CLAHE-like local contrast), a display LUT (gamma or a sigmoid VOI LUT), burned-in
text and markers, 8-bit (sometimes coarser) storage and lossy JPEG. :func:`jitter_acquisition`
applies each of these per image with its own probability, in that physical order, so models
trained on PhantomCXR (and on real images) see the spread of appearances of real acquisitions.

As in :mod:`cxr_models.train.augment`, images are display-range tensors (N, C, H, W) in [0, 1],
white = dense, and every random choice comes from an explicit CPU ``torch.Generator``: a seeded
run gives the same result on any device. Tensor work runs where the batch lives; JPEG and text
rendering (PIL) run on the CPU for the images that need them and move back. Only the first
``channels`` channels are images; the rest (masks, maps) pass through unchanged, which is why
no effect here moves pixels (zoom and shifts belong to :func:`augment.random_affine`, which
warps the masks too).
"""

from __future__ import annotations

import dataclasses
import io
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter, ImageFont

EFFECTS = ("blur", "noise", "collimation", "unsharp", "equalize", "clahe", "gamma", "voi_lut",
           "annotation", "invert", "quantize", "jpeg")
"""The effects in the order they are applied; ``<effect>_probability`` is each one's field."""


@dataclass(frozen=True)
class AcquisitionJitter:
    """Per-image probability and parameter ranges of each acquisition effect.

    Ranges are (low, high), drawn uniformly (``gamma`` log-uniformly). Sizes are fractions of
    the image side unless they say px. The defaults keep each effect to 10-25 % of images so
    models still mostly see the images as they are; about 1 image in 9 gets none at all.

    - blur: Gaussian detector blur, ``blur_sigma`` px.
    - noise: additive Gaussian noise, ``noise_sigma`` display units (the same on every image channel).
    - collimation: each side of the image, with probability ``collimation_side_probability`` (at
      least one), is masked over ``collimation_margin`` of the side by a slightly tilted
      (``collimation_tilt_degrees``), soft edge filled white (``collimation_white_probability``) or black.
    - unsharp: CR-style unsharp masking ``x + amount (x - blur(x))``, blur sigma
      ``unsharp_sigma`` of the shorter side, ``unsharp_amount``.
    - equalize: global histogram equalisation blended with the original by ``equalize_blend``.
    - clahe: tile-based histogram equalisation (``clahe_tiles`` per side, clip limit ``clahe_clip``
      times the uniform bin count, bilinear between tile centres) blended by ``clahe_blend``.
    - gamma: ``x ** gamma``.
    - voi_lut: a sigmoid VOI LUT centred at ``voi_lut_center`` with width ``voi_lut_width``,
      rescaled so 0 and 1 stay 0 and 1.
    - annotation: ``annotation_count`` burned-in side markers ("R", "L", sometimes boxed), texts
      ("AP", "PORTABLE", dates, ...) and arrows/lines, white (``annotation_white_probability``) or
      black, near the borders and corners (``annotation_border_probability``) or anywhere.
    - invert: ``1 - x``, a MONOCHROME1 image read as MONOCHROME2. Off by default: the ingest
      handles photometric interpretation; raise it only to train robustness to that error.
    - quantize: rounding to ``bits`` bits, drawn uniformly from ``quantize_bits`` (mostly 8).
    - jpeg: baseline JPEG of the 8-bit grey image at a quality in ``jpeg_quality``.
    """

    blur_probability: float = 0.15
    blur_sigma: tuple[float, float] = (0.4, 1.2)
    noise_probability: float = 0.2
    noise_sigma: tuple[float, float] = (0.004, 0.02)
    collimation_probability: float = 0.1
    collimation_side_probability: float = 0.5
    collimation_margin: tuple[float, float] = (0.02, 0.12)
    collimation_tilt_degrees: float = 3.0
    collimation_white_probability: float = 0.5
    unsharp_probability: float = 0.2
    unsharp_sigma: tuple[float, float] = (0.015, 0.06)
    unsharp_amount: tuple[float, float] = (0.3, 1.5)
    equalize_probability: float = 0.1
    equalize_blend: tuple[float, float] = (0.2, 0.6)
    clahe_probability: float = 0.15
    clahe_tiles: tuple[int, int] = (4, 8)
    clahe_clip: tuple[float, float] = (1.5, 4.0)
    clahe_blend: tuple[float, float] = (0.5, 1.0)
    gamma_probability: float = 0.2
    gamma: tuple[float, float] = (0.65, 1.6)
    voi_lut_probability: float = 0.15
    voi_lut_center: tuple[float, float] = (0.4, 0.6)
    voi_lut_width: tuple[float, float] = (0.15, 0.35)
    annotation_probability: float = 0.25
    annotation_count: tuple[int, int] = (1, 3)
    annotation_white_probability: float = 0.8
    annotation_border_probability: float = 0.85
    invert_probability: float = 0.0
    quantize_probability: float = 0.2
    quantize_bits: tuple[int, ...] = (8, 8, 8, 6)
    jpeg_probability: float = 0.2
    jpeg_quality: tuple[int, int] = (20, 90)

    @classmethod
    def only(cls, *effects: str, probability: float = 1.0, **overrides: object) -> AcquisitionJitter:
        """Every effect off except ``effects`` (names from :data:`EFFECTS`) at ``probability``."""
        unknown = set(effects) - set(EFFECTS)
        if unknown:
            raise ValueError(f"unknown effects {sorted(unknown)}; choose from {EFFECTS}")
        probabilities = {f"{e}_probability": (probability if e in effects else 0.0) for e in EFFECTS}
        return dataclasses.replace(cls(), **probabilities, **overrides)


# ---------------------------------------------------------------------------------------------
# random draws (CPU generator)


def _uniform(n: int, bounds: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    low, high = float(bounds[0]), float(bounds[1])
    return low + (high - low) * torch.rand(n, generator=generator)


def _randint(low: int, high: int, generator: torch.Generator) -> int:
    """An integer in [low, high] (inclusive)."""
    return int(torch.randint(int(low), int(high) + 1, (1,), generator=generator))


def _rand(generator: torch.Generator) -> float:
    return float(torch.rand(1, generator=generator))


def _choice(options: tuple | list, generator: torch.Generator):
    return options[int(torch.randint(len(options), (1,), generator=generator))]


def _col(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(n,) parameters as (n, 1, 1, 1) on the device and dtype of ``like``."""
    return v.to(like.device, like.dtype).view(-1, 1, 1, 1)


# ---------------------------------------------------------------------------------------------
# filters


def _gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """(n, 2 radius + 1) normalised 1-D Gaussians."""
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    k = torch.exp(-0.5 * (t[None, :] / sigma[:, None].clamp(min=1e-3)) ** 2)
    return k / k.sum(dim=1, keepdim=True)


def _separable_blur(y: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Blur (n, c, H, W) with a per-image 1-D kernel (n, K) along both axes (replicate borders)."""
    n, c, h, w = y.shape
    k = kernels.to(y.device, y.dtype).repeat_interleave(c, dim=0)
    r = k.shape[1] // 2
    planes = y.reshape(1, n * c, h, w)
    planes = F.conv2d(F.pad(planes, (r, r, 0, 0), mode="replicate"), k.view(n * c, 1, 1, -1), groups=n * c)
    planes = F.conv2d(F.pad(planes, (0, 0, r, r), mode="replicate"), k.view(n * c, 1, -1, 1), groups=n * c)
    return planes.view(n, c, h, w)


def _wide_blur(y: torch.Tensor, sigma_px: float) -> torch.Tensor:
    """A large-sigma Gaussian blur of (1, c, H, W): area downsample, small blur, bilinear upsample."""
    h, w = y.shape[-2:]
    factor = max(1, int(sigma_px // 2.5))
    small = y if factor == 1 else F.interpolate(y, size=(max(h // factor, 1), max(w // factor, 1)), mode="area")
    sigma_small = sigma_px / factor
    radius = max(1, min(int(math.ceil(3.0 * sigma_small)), min(small.shape[-2:]) - 1))
    small = _separable_blur(small, _gaussian_kernels(torch.tensor([sigma_small]), radius))
    if factor == 1:
        return small
    return F.interpolate(small, size=(h, w), mode="bilinear", align_corners=False)


def _equalize(y: torch.Tensor, bins: int = 256) -> torch.Tensor:
    """Global histogram equalisation of every (image, channel) plane of (n, c, H, W)."""
    n, c, h, w = y.shape
    planes = y.reshape(n * c, h * w)
    q = (planes * (bins - 1)).round().long().clamp(0, bins - 1)
    offset = torch.arange(n * c, device=y.device)[:, None] * bins
    hist = torch.bincount((q + offset).reshape(-1), minlength=n * c * bins).view(n * c, bins).to(y.dtype)
    cdf = hist.cumsum(dim=1)
    cdf = cdf - hist / 2  # mid-rank, so the map is symmetric (a flat plane maps to 0.5)
    cdf = cdf / (h * w)
    pos = planes * (bins - 1)
    lo = pos.floor().long().clamp(0, bins - 1)
    hi = (lo + 1).clamp(max=bins - 1)
    frac = pos - lo.to(y.dtype)
    out = torch.gather(cdf, 1, lo) * (1 - frac) + torch.gather(cdf, 1, hi) * frac
    return out.view(n, c, h, w)


def clahe(y: torch.Tensor, *, tiles: int, clip: float, bins: int = 256) -> torch.Tensor:
    """Contrast-limited adaptive histogram equalisation of every plane of (n, c, H, W) in [0, 1].

    ``tiles`` per side; each tile's histogram is clipped at ``clip`` times the uniform count and
    the excess spread over all bins; the per-tile equalisation maps are interpolated bilinearly
    between tile centres (nearest at the borders), as in OpenCV's CLAHE.
    """
    n, c, h, w = y.shape
    p = n * c
    th, tw = math.ceil(h / tiles), math.ceil(w / tiles)
    planes = y.reshape(p, 1, h, w)
    pad_h, pad_w = tiles * th - h, tiles * tw - w
    if pad_h or pad_w:
        mode = "reflect" if pad_h < h and pad_w < w else "replicate"
        planes = F.pad(planes, (0, pad_w, 0, pad_h), mode=mode)
    q = (planes[:, 0] * (bins - 1)).round().long().clamp(0, bins - 1)  # (p, T th, T tw)
    rows = torch.arange(tiles * th, device=y.device) // th
    cols = torch.arange(tiles * tw, device=y.device) // tw
    tile = rows[:, None] * tiles + cols[None, :]
    index = (torch.arange(p, device=y.device)[:, None, None] * tiles * tiles + tile) * bins + q
    hist = torch.bincount(index.reshape(-1), minlength=p * tiles * tiles * bins)
    hist = hist.view(p, tiles * tiles, bins).to(y.dtype)
    limit = max(clip * th * tw / bins, 1.0)
    excess = (hist - limit).clamp(min=0).sum(dim=2, keepdim=True)
    hist = hist.clamp(max=limit) + excess / bins
    lut = (hist.cumsum(dim=2) - hist / 2) / (th * tw)  # (p, T*T, bins)

    def axis(size: int, step: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        pos = (torch.arange(size, device=y.device, dtype=y.dtype) + 0.5) / step - 0.5
        first = pos.floor()
        weight = pos - first
        first = first.long()
        return first.clamp(0, tiles - 1), (first + 1).clamp(0, tiles - 1), weight

    r0, r1, wr = axis(h, th)
    c0, c1, wc = axis(w, tw)
    qb = q[:, :h, :w]
    base = torch.arange(p, device=y.device)[:, None, None] * tiles * tiles
    flat = lut.reshape(-1)

    def look(r: torch.Tensor, cc: torch.Tensor) -> torch.Tensor:
        return flat[((base + r[:, None] * tiles + cc[None, :]) * bins + qb).reshape(-1)].view(p, h, w)

    wr, wc = wr[:, None], wc[None, :]
    top = look(r0, c0) * (1 - wc) + look(r0, c1) * wc
    bottom = look(r1, c0) * (1 - wc) + look(r1, c1) * wc
    return (top * (1 - wr) + bottom * wr).view(n, c, h, w)


def _voi_sigmoid(y: torch.Tensor, center: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    lo = torch.sigmoid(-center / width)
    hi = torch.sigmoid((1 - center) / width)
    return (torch.sigmoid((y - center) / width) - lo) / (hi - lo)


def _collimation(shape: tuple[int, ...], n: int, jitter: AcquisitionJitter, generator: torch.Generator,
                 device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """(n, 1, H, W) coverage in [0, 1] of collimator shutters on 1-4 sides with soft, tilted edges."""
    h, w = shape[-2:]
    sides = torch.rand(n, 4, generator=generator) < jitter.collimation_side_probability
    forced = torch.randint(4, (n,), generator=generator)
    sides[torch.arange(n), forced] = True
    margin = _uniform(4 * n, jitter.collimation_margin, generator).view(n, 4)
    tilt = torch.tan(torch.deg2rad(_uniform(4 * n, (-jitter.collimation_tilt_degrees,
                                                    jitter.collimation_tilt_degrees), generator))).view(n, 4)
    soft = _uniform(n, (0.5, 2.0), generator)
    v = ((torch.arange(h, dtype=torch.float32) + 0.5) / h - 0.5).view(1, h, 1)
    u = ((torch.arange(w, dtype=torch.float32) + 0.5) / w - 0.5).view(1, 1, w)
    m = margin.masked_fill(~sides, -1.0).view(n, 4, 1, 1)
    t = tilt.view(n, 4, 1, 1)
    # signed distance (px) inside each shutter edge: left, right, top, bottom
    dist = torch.stack([
        (u + 0.5 - m[:, 0] - t[:, 0] * v) * w,
        (0.5 - u - m[:, 1] - t[:, 1] * v) * w,
        (v + 0.5 - m[:, 2] - t[:, 2] * u) * h,
        (0.5 - v - m[:, 3] - t[:, 3] * u) * h,
    ], dim=1)
    inside = dist.min(dim=1).values
    cover = (0.5 - inside / soft.view(n, 1, 1)).clamp(0.0, 1.0)
    return cover.view(n, 1, h, w).to(device, dtype)


# ---------------------------------------------------------------------------------------------
# burned-in annotations (PIL)

_FONT_FILES = (
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"),
    Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"),
)
_TEXTS = ("AP", "PA", "PORTABLE", "PORTABLE AP", "PORT", "AP SUPINE", "SUPINE", "ERECT", "SEMI-ERECT",
          "UPRIGHT", "LAT", "INSP", "CHEST", "STANDING")
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")


@lru_cache(maxsize=64)
def _load_font(size: int) -> ImageFont.FreeTypeFont | None:
    """A scalable font ``size`` px high: DejaVu Sans if installed, Pillow's own, or None (bitmap only)."""
    for path in _FONT_FILES:
        if path.exists():
            try:
                return ImageFont.truetype(str(path), size)
            except OSError:
                continue
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType
    except (TypeError, OSError, ImportError, AttributeError):
        return None


def _text(generator: torch.Generator) -> str:
    kind = _rand(generator)
    if kind < 0.6:
        return _choice(_TEXTS, generator)
    day, month, year = _randint(1, 28, generator), _randint(1, 12, generator), _randint(0, 29, generator)
    if kind < 0.75:
        return f"{day:02d}/{month:02d}/{year:02d}"
    if kind < 0.85:
        return f"{day:02d}-{_MONTHS[month - 1]}-20{year:02d}"
    if kind < 0.93:
        return f"20{year:02d}-{month:02d}-{day:02d}"
    return f"{_randint(0, 23, generator):02d}:{_randint(0, 59, generator):02d}"


def _position(extent: tuple[int, int], size: tuple[int, int], border: bool,
              generator: torch.Generator) -> tuple[int, int]:
    """Top-left corner for an ``extent`` (w, h) item in a ``size`` (W, H) image, near a border or anywhere."""
    (ew, eh), (cols, rows) = extent, size
    free_x, free_y = max(cols - ew - 2, 2), max(rows - eh - 2, 2)
    if not border:
        return _randint(2, free_x, generator), _randint(2, free_y, generator)
    band_x, band_y = max(int(0.12 * cols), 3), max(int(0.12 * rows), 3)
    def near(free: int, band: int) -> int:
        lo = _randint(2, min(2 + band, free), generator)
        return lo if _rand(generator) < 0.5 else max(free - (lo - 2), 2)
    if _rand(generator) < 0.6:  # a corner
        return near(free_x, band_x), near(free_y, band_y)
    if _rand(generator) < 0.5:  # along the top or bottom
        return _randint(2, free_x, generator), near(free_y, band_y)
    return near(free_x, band_x), _randint(2, free_y, generator)


def _draw_text(canvas: Image.Image, text: str, height: int, stroke: int, boxed: bool, border: bool,
               generator: torch.Generator) -> None:
    """Text about ``height`` px high onto the coverage ``canvas`` ("L", 255 = covered)."""
    font = _load_font(height)
    if font is not None:
        probe = ImageDraw.Draw(canvas)
        left, top, right, bottom = probe.textbbox((0, 0), text, font=font, stroke_width=stroke)
        glyphs = Image.new("L", (right - left + 1, bottom - top + 1), 0)
        ImageDraw.Draw(glyphs).text((-left, -top), text, fill=255, font=font, stroke_width=stroke,
                                    stroke_fill=255)
    else:  # bitmap font: draw at its own size, scale up
        bitmap = ImageFont.load_default()
        left, top, right, bottom = ImageDraw.Draw(canvas).textbbox((0, 0), text, font=bitmap)
        small = Image.new("L", (right - left + 2, bottom - top + 2), 0)
        ImageDraw.Draw(small).text((1 - left, 1 - top), text, fill=255, font=bitmap)
        scale = max(height / max(small.height, 1), 1.0)
        glyphs = small.resize((max(int(small.width * scale), 1), max(int(small.height * scale), 1)),
                              Image.BILINEAR)
        if stroke:
            glyphs = glyphs.filter(ImageFilter.MaxFilter(2 * stroke + 1))
    pad = max(height // 5, 2) if boxed else 0
    x, y = _position((glyphs.width + 2 * pad, glyphs.height + 2 * pad), canvas.size, border, generator)
    canvas.paste(255, (x + pad, y + pad), mask=glyphs)
    if boxed:
        ImageDraw.Draw(canvas).rectangle((x, y, x + glyphs.width + 2 * pad, y + glyphs.height + 2 * pad),
                                         outline=255, width=max(height // 12, 1))


def _draw_arrow(canvas: Image.Image, side: int, border: bool, generator: torch.Generator) -> None:
    """An arrow (or a plain line) pointing anywhere, ``side`` = the shorter image side."""
    length = _uniform(1, (0.05, 0.16), generator).item() * side
    angle = _uniform(1, (0.0, 2.0 * math.pi), generator).item()
    width = _randint(1, max(1, min(4, side // 80)), generator)
    dx, dy = length * math.cos(angle), length * math.sin(angle)
    extent = (int(abs(dx)) + 2 * width + 2, int(abs(dy)) + 2 * width + 2)
    x, y = _position(extent, canvas.size, border, generator)
    x0, y0 = x + width + (0 if dx >= 0 else -dx), y + width + (0 if dy >= 0 else -dy)
    x1, y1 = x0 + dx, y0 + dy
    draw = ImageDraw.Draw(canvas)
    draw.line((x0, y0, x1, y1), fill=255, width=width)
    if _rand(generator) < 0.7:  # arrowhead at the tip
        head = max(length * 0.3, 3.0)
        for turn in (2.6, -2.6):
            draw.line((x1, y1, x1 + head * math.cos(angle + turn), y1 + head * math.sin(angle + turn)),
                      fill=255, width=width)


def annotation_coverage(rows: int, cols: int, *, jitter: AcquisitionJitter,
                        generator: torch.Generator) -> np.ndarray:
    """(rows, cols) float32 coverage in [0, 1] of 1-3 burned-in markers, texts and arrows."""
    canvas = Image.new("L", (cols, rows), 0)
    side = min(rows, cols)
    marker = False
    for _ in range(_randint(*jitter.annotation_count, generator)):
        border = _rand(generator) < jitter.annotation_border_probability
        kind = _rand(generator)
        if kind < 0.4 and not marker:  # one lead side marker, large and often boxed
            marker = True
            height = max(int(_uniform(1, (0.035, 0.09), generator).item() * side), 8)
            stroke = _randint(0, 1, generator) if height >= 14 else 0  # thin strokes blot small glyphs
            _draw_text(canvas, _choice(("R", "L"), generator), height, stroke=stroke,
                       boxed=_rand(generator) < 0.4, border=border, generator=generator)
        elif kind < 0.8:  # text (also instead of a second side marker)
            height = max(int(_uniform(1, (0.02, 0.045), generator).item() * side), 7)
            stroke = int(_rand(generator) < 0.2 and height >= 14)
            _draw_text(canvas, _text(generator), height, stroke=stroke, boxed=False,
                       border=border, generator=generator)
        else:
            _draw_arrow(canvas, side, border, generator)
    return np.asarray(canvas, dtype=np.float32) / 255.0


def _jpeg(plane: np.ndarray, quality: int) -> np.ndarray:
    """An 8-bit grey JPEG round trip of a (H, W) float plane in [0, 1]."""
    buffer = io.BytesIO()
    Image.fromarray(np.clip(plane * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L").save(
        buffer, format="JPEG", quality=int(quality))
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("L"), dtype=np.float32) / 255.0


# ---------------------------------------------------------------------------------------------


def jitter_acquisition(x: torch.Tensor, *, jitter: AcquisitionJitter, generator: torch.Generator,
                       channels: int = 1) -> torch.Tensor:
    """Per-image acquisition effects on the first ``channels`` channels of ``x`` (N, C, H, W) in [0, 1].

    Each effect of :data:`EFFECTS` fires on an image with its own probability, in that order;
    channels past ``channels`` pass through unchanged. Returns a new tensor of the same shape,
    dtype and device, in [0, 1]. Deterministic for a given ``generator`` state.
    """
    if x.dim() != 4:
        raise ValueError(f"expected (N, C, H, W), got shape {tuple(x.shape)}")
    if not 1 <= channels <= x.shape[1]:
        raise ValueError(f"channels must be in [1, {x.shape[1]}], got {channels}")
    n, _, h, w = x.shape
    out = x.clone()
    fire = {e: torch.rand(n, generator=generator) < getattr(jitter, f"{e}_probability") for e in EFFECTS}
    touched = torch.stack(list(fire.values())).any(dim=0)
    if not bool(touched.any()):
        return out
    active = touched.nonzero().flatten()
    # work on the touched images only; ``fire`` and ``select`` index into that subset
    fire = {e: f[active] for e, f in fire.items()}
    active = active.to(x.device)
    y = x[active, :channels].float().clamp(0.0, 1.0)

    def select(effect: str) -> torch.Tensor:
        return fire[effect].nonzero().flatten().to(y.device)

    if (idx := select("blur")).numel():
        sigma = _uniform(idx.numel(), jitter.blur_sigma, generator)
        radius = max(1, min(int(math.ceil(3.0 * float(sigma.max()))), min(h, w) - 1))
        y[idx] = _separable_blur(y[idx], _gaussian_kernels(sigma, radius))
    if (idx := select("noise")).numel():
        sigma = _uniform(idx.numel(), jitter.noise_sigma, generator)
        noise = torch.randn((idx.numel(), 1, h, w), generator=generator)
        y[idx] = (y[idx] + _col(sigma, y) * noise.to(y.device)).clamp(0.0, 1.0)
    if (idx := select("collimation")).numel():
        cover = _collimation(y.shape, idx.numel(), jitter, generator, y.device, y.dtype)
        fill = (torch.rand(idx.numel(), generator=generator) < jitter.collimation_white_probability).float()
        y[idx] = y[idx] * (1 - cover) + _col(fill, y) * cover
    if (idx := select("unsharp")).numel():
        sigma = _uniform(idx.numel(), jitter.unsharp_sigma, generator) * min(h, w)
        amount = _uniform(idx.numel(), jitter.unsharp_amount, generator)
        for k, i in enumerate(idx.tolist()):
            image = y[i:i + 1]
            y[i:i + 1] = (image + float(amount[k]) * (image - _wide_blur(image, float(sigma[k])))).clamp(0.0, 1.0)
    if (idx := select("equalize")).numel():
        blend = _col(_uniform(idx.numel(), jitter.equalize_blend, generator), y)
        y[idx] = y[idx] * (1 - blend) + _equalize(y[idx]) * blend
    if (idx := select("clahe")).numel():
        tiles = torch.randint(jitter.clahe_tiles[0], jitter.clahe_tiles[1] + 1, (idx.numel(),), generator=generator)
        clip = _uniform(idx.numel(), jitter.clahe_clip, generator)
        blend = _uniform(idx.numel(), jitter.clahe_blend, generator)
        for k, i in enumerate(idx.tolist()):
            image = y[i:i + 1]
            local = clahe(image, tiles=max(1, min(int(tiles[k]), h, w)), clip=float(clip[k]))
            y[i:i + 1] = image * (1 - float(blend[k])) + local * float(blend[k])
    if (idx := select("gamma")).numel():
        log_lo, log_hi = math.log(jitter.gamma[0]), math.log(jitter.gamma[1])
        gamma = torch.exp(_uniform(idx.numel(), (log_lo, log_hi), generator))
        y[idx] = y[idx].clamp(0.0, 1.0) ** _col(gamma, y)
    if (idx := select("voi_lut")).numel():
        center = _col(_uniform(idx.numel(), jitter.voi_lut_center, generator), y)
        width = _col(_uniform(idx.numel(), jitter.voi_lut_width, generator), y)
        y[idx] = _voi_sigmoid(y[idx], center, width)
    if (idx := select("annotation")).numel():
        covers = [annotation_coverage(h, w, jitter=jitter, generator=generator) for _ in range(idx.numel())]
        cover = torch.from_numpy(np.stack(covers)).view(-1, 1, h, w).to(y.device, y.dtype)
        white = (torch.rand(idx.numel(), generator=generator) < jitter.annotation_white_probability).float()
        y[idx] = y[idx] * (1 - cover) + _col(white, y) * cover
    if (idx := select("invert")).numel():
        y[idx] = 1.0 - y[idx]
    if (idx := select("quantize")).numel():
        choice = torch.randint(len(jitter.quantize_bits), (idx.numel(),), generator=generator)
        levels = torch.tensor([2.0 ** jitter.quantize_bits[int(c)] - 1 for c in choice])
        levels = _col(levels, y)
        y[idx] = (y[idx].clamp(0.0, 1.0) * levels).round() / levels
    if (idx := select("jpeg")).numel():
        quality = torch.randint(jitter.jpeg_quality[0], jitter.jpeg_quality[1] + 1, (idx.numel(),), generator=generator)
        planes = y[idx].clamp(0.0, 1.0).cpu().numpy()
        coded = np.stack([[_jpeg(p, int(q)) for p in image] for image, q in zip(planes, quality)])
        y[idx] = torch.from_numpy(coded).to(y.device, y.dtype)
    out[active, :channels] = y.clamp(0.0, 1.0).to(out.dtype)
    return out
