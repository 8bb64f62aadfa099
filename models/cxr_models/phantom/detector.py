"""From line integrals to stored pixels: exposure, scatter, noise, detector response, processing, bits.

The physics runs on the primary intensity ``exp(-P)``: a heel-effect gradient, focal-spot blur,
a broad scatter glow (scatter-to-primary ratio higher without a grid), Poisson-like quantum noise
from the photon fluence per pixel, detector blur and electronic noise. The detector reports the
log signal; the "modality processing" then normalises it, optionally equalises the dynamic range
and sharpens, and applies a sigmoid or gamma contrast curve, giving the display image (white =
dense). Collimation blades leave unexposed borders that processing shows white or blacks out.
:func:`encode` stores the display image in 10-16 bits as MONOCHROME1 or MONOCHROME2 with the
window that shows it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Exposure:
    """Acquisition physics of one radiograph."""

    kvp: float
    bone_gain: float
    metal_gain: float
    hardening: float
    fluence: float
    scatter_ratio: float
    scatter_sigma_mm: float
    focal_blur_mm: float
    detector_blur_mm: float
    electronic_noise: float
    heel: float
    grid: bool


@dataclass(frozen=True)
class Processing:
    """The modality's image processing (normalisation, equalisation, sharpening, contrast curve)."""

    low_percentile: float
    high_percentile: float
    equalization: float
    equalization_sigma_mm: float
    unsharp: float
    unsharp_sigma_mm: float
    sigmoid: bool
    gain: float
    center: float
    gamma: float
    black_shutter: bool


@dataclass(frozen=True)
class Collimation:
    """Fractions of the image height/width cut by each collimator blade."""

    top: float
    bottom: float
    left: float
    right: float

    def mask(self, rows: int, cols: int, *, soft_px: float) -> np.ndarray:
        """Transmission of the blades (1 in the field), with a penumbra of ``soft_px`` pixels."""
        r = np.arange(rows, dtype=np.float32) + 0.5
        c = np.arange(cols, dtype=np.float32) + 0.5
        s = max(soft_px, 0.3)

        def ramp(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
            return np.clip((x - lo) / s + 0.5, 0, 1) * np.clip((hi - x) / s + 0.5, 0, 1)

        return ramp(r, self.top * rows, rows * (1 - self.bottom))[:, None] * ramp(c, self.left * cols,
                                                                                 cols * (1 - self.right))[None, :]


@dataclass(frozen=True)
class Encoded:
    """Stored pixels and the attributes that display them."""

    pixels: np.ndarray
    bits_stored: int
    photometric: str
    window_center: float
    window_width: float


def sample_exposure(rng: np.random.Generator, *, view: str, portable: bool) -> Exposure:
    """Physics of a chest ('PA', 'AP', 'LL', 'RL') or other ('other') radiograph."""
    if view == "other":
        kvp = float(rng.uniform(55.0, 85.0))
        grid = bool(rng.random() < 0.5)
    elif portable:
        kvp = float(rng.uniform(75.0, 100.0))
        grid = bool(rng.random() < 0.2)
    else:
        kvp = float(rng.uniform(100.0, 130.0)) + (8.0 if view in ("LL", "RL") else 0.0)
        grid = bool(rng.random() < 0.9)
    return Exposure(
        kvp=kvp,
        bone_gain=float(np.clip(1.0 + (100.0 - kvp) * 0.01 + rng.normal(0, 0.05), 0.75, 1.35)),
        metal_gain=float(rng.uniform(0.8, 1.3)),
        hardening=float(rng.uniform(0.0, 0.05)),
        fluence=float(np.exp(rng.uniform(np.log(3e4), np.log(4e5)))),
        scatter_ratio=float(rng.uniform(0.15, 0.45) if grid else rng.uniform(0.6, 1.6)),
        scatter_sigma_mm=float(rng.uniform(25.0, 60.0)),
        focal_blur_mm=float(rng.uniform(0.15, 0.6)),
        detector_blur_mm=float(rng.uniform(0.05, 0.2)),
        electronic_noise=float(np.exp(rng.uniform(np.log(2e-5), np.log(4e-4)))),
        heel=float(rng.uniform(-0.15, 0.15)),
        grid=grid,
    )


def sample_processing(rng: np.random.Generator) -> Processing:
    sigmoid = bool(rng.random() < 0.65)
    return Processing(
        low_percentile=float(rng.uniform(0.5, 8.0)),
        high_percentile=float(rng.uniform(97.5, 99.8)),
        equalization=float(rng.uniform(0.1, 0.5)),
        equalization_sigma_mm=float(rng.uniform(12.0, 40.0)),
        unsharp=float(rng.uniform(0.2, 1.8)),
        unsharp_sigma_mm=float(rng.uniform(1.5, 5.0)),
        sigmoid=sigmoid,
        gain=float(rng.uniform(3.5, 7.0)),
        center=float(rng.uniform(0.42, 0.6)),
        gamma=float(rng.uniform(0.75, 1.5)),
        black_shutter=bool(rng.random() < 0.5),
    )


def sample_collimation(rng: np.random.Generator, *, keep: tuple[float, float, float, float]) -> Collimation:
    """Blades that never cut into ``keep`` = (top, bottom, left, right) fractions of the image.

    About a third of images are not visibly collimated.
    """
    if rng.random() < 0.35:
        return Collimation(0.0, 0.0, 0.0, 0.0)
    limits = [max(min(k - 0.01, 0.12), 0.0) for k in keep]
    cuts = [float(rng.uniform(0.0, lim)) if rng.random() < 0.75 else 0.0 for lim in limits]
    return Collimation(*cuts)


def _blur_downsampled(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur of a smooth quantity computed on a grid ~sigma/3 coarser, then resized back."""
    rows, cols = image.shape
    factor = max(1, int(sigma_px / 3.0))
    small_rows, small_cols = max(rows // factor, 2), max(cols // factor, 2)
    small = np.asarray(Image.fromarray(image.astype(np.float32), mode="F").resize((small_cols, small_rows),
                                                                                 Image.BILINEAR))
    small = ndimage.gaussian_filter(small, sigma=sigma_px * small_rows / rows, mode="nearest")
    return np.asarray(Image.fromarray(small.astype(np.float32), mode="F").resize((cols, rows), Image.BILINEAR))


def line_integral(channels: dict[str, np.ndarray], exposure: Exposure) -> np.ndarray:
    """Total attenuation ``P`` with bone and metal contrast scaled for the tube voltage."""
    return (channels["soft"] + np.float32(exposure.bone_gain) * channels["bone"]
            + np.float32(exposure.metal_gain) * channels["metal"])


def _smooth(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian blur; wide kernels run on a coarser grid."""
    if sigma_px > 3.0:
        return _blur_downsampled(image, sigma_px)
    return ndimage.gaussian_filter(image, sigma=sigma_px, mode="nearest")


def expose(
    attenuation: np.ndarray,
    *,
    spacing: float,
    exposure: Exposure,
    field: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """The detector's log signal ``-log(I / I0)`` (float32), noisy, for the line integral ``attenuation``."""
    # A line integral is never negative; summed relative attenuations (air in the lungs or a
    # pneumothorax minus tissue) can undershoot zero at the body's edge, where exp(-p) would overflow.
    attenuation = np.maximum(attenuation, np.float32(0.0))
    p = attenuation - np.float32(exposure.hardening) * attenuation * attenuation / (1.0 + attenuation)
    rows, cols = p.shape
    primary = np.exp(-p) * field
    heel = 1.0 + exposure.heel * (np.linspace(-1.0, 1.0, rows, dtype=np.float32)[:, None])
    primary *= heel
    focal = exposure.focal_blur_mm / spacing
    if focal > 0.3:
        primary = _smooth(primary, focal)
    scatter = _blur_downsampled(primary, exposure.scatter_sigma_mm / spacing) * np.float32(exposure.scatter_ratio)
    # scatter also reaches beyond the blades, a little
    intensity = primary + scatter * (0.25 + 0.75 * field)
    photons = exposure.fluence * spacing * spacing
    noise = rng.standard_normal(intensity.shape, dtype=np.float32)
    noisy = np.sqrt(np.maximum(intensity, 0.0) * np.float32(1.0 / photons))
    noisy *= noise
    noisy += intensity
    det = exposure.detector_blur_mm / spacing
    if det > 0.3:
        noisy = _smooth(noisy, det)
    # electronic noise: the same draws, mirrored, are independent of the pixel they land on
    noisy += np.float32(exposure.electronic_noise) * noise[::-1, ::-1]
    np.maximum(noisy, np.float32(1e-5), out=noisy)
    return -np.log(noisy)


def process(
    signal: np.ndarray, *, field: np.ndarray, body: np.ndarray, spacing: float, processing: Processing
) -> np.ndarray:
    """Display image in [0, 1] (white = dense) from the log signal.

    Like a modality's histogram analysis, the grey range comes from the exposed anatomy
    (``body`` within the collimated ``field``): direct exposure goes black.
    """
    inside = (field > 0.5) & body
    sample = signal[::3, ::3][inside[::3, ::3]]
    if sample.size < 16:
        sample = signal.reshape(-1)
    lo, hi = np.percentile(sample, [processing.low_percentile, processing.high_percentile])
    x = (signal - np.float32(lo)) / np.float32(max(hi - lo, 1e-3))
    if processing.equalization > 0:
        base = _blur_downsampled(np.clip(x, -0.2, 1.2), processing.equalization_sigma_mm / spacing)
        x = x - np.float32(processing.equalization) * (base - np.float32(0.5))
    if processing.unsharp > 0:
        sigma = processing.unsharp_sigma_mm / spacing
        if sigma > 0.5:
            x = x + np.float32(processing.unsharp) * (x - _smooth(x, sigma))
    if processing.sigmoid:
        y = 1.0 / (1.0 + np.exp(-np.float32(processing.gain) * (x - np.float32(processing.center))))
        y0 = 1.0 / (1.0 + np.exp(processing.gain * processing.center))
        y1 = 1.0 / (1.0 + np.exp(-processing.gain * (1.0 - processing.center)))
        y = (y - np.float32(y0)) / np.float32(y1 - y0)
    else:
        y = np.power(np.clip(x, 0.0, None), np.float32(processing.gamma))
    y = np.clip(y, 0.0, 1.0)
    if processing.black_shutter:
        y = y * (field > 0.5)
    return y.astype(np.float32)


def encode(display: np.ndarray, *, bits: int, photometric: str, rng: np.random.Generator) -> Encoded:
    """Stored pixels in ``bits`` bits and a window that displays ``display`` (white = dense)."""
    if not 8 <= bits <= 16:
        raise ValueError(f"bits must be in [8, 16], got {bits}")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {photometric!r}")
    top = 2**bits - 1
    lo = float(rng.uniform(0.0, 0.08)) * top
    hi = float(rng.uniform(0.85, 1.0)) * top
    grey = display if photometric == "MONOCHROME2" else 1.0 - display
    stored = np.rint(lo + grey.astype(np.float64) * (hi - lo)).astype(np.uint16)
    return Encoded(pixels=stored, bits_stored=bits, photometric=photometric,
                   window_center=round((lo + hi) / 2.0, 2), window_width=round(hi - lo, 2))


def decode_display(encoded: Encoded) -> np.ndarray:
    """What a viewer shows for ``encoded`` (linear window, MONOCHROME1 inverted), float32 in [0, 1]."""
    lo = encoded.window_center - encoded.window_width / 2.0
    out = np.clip((encoded.pixels.astype(np.float64) - lo) / encoded.window_width, 0.0, 1.0)
    if encoded.photometric == "MONOCHROME1":
        out = 1.0 - out
    return out.astype(np.float32)
