"""Batch augmentations in torch: random affine warps (with masks) and intensity jitter.

Random parameters are drawn on the CPU from an explicit ``torch.Generator`` so a seeded run is
reproducible on any device; the warps themselves run wherever the batch lives.
Images are display-range tensors (N, C, H, W) in [0, 1], white = dense.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from cxr_models.train.acquisition import AcquisitionJitter


@dataclass(frozen=True)
class AffineJitter:
    """Ranges of a random similarity warp: scale factor, shift (fraction of the size), rotation, flip."""

    scale: tuple[float, float] = (0.9, 1.1)
    shift: float = 0.05
    rotate_degrees: float = 5.0
    flip_probability: float = 0.0


@dataclass(frozen=True)
class IntensityJitter:
    """Ranges of brightness offset, contrast factor, gamma and Gaussian noise sigma (display units)."""

    brightness: float = 0.08
    contrast: tuple[float, float] = (0.8, 1.25)
    gamma: tuple[float, float] = (0.7, 1.4)
    noise: float = 0.03


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=generator)


def random_affine(n: int, *, jitter: AffineJitter, generator: torch.Generator) -> torch.Tensor:
    """(n, 2, 3) ``affine_grid`` matrices (output -> input normalised coordinates)."""
    log_lo, log_hi = math.log(jitter.scale[0]), math.log(jitter.scale[1])
    scale = torch.exp(_uniform(n, log_lo, log_hi, generator))
    angle = torch.deg2rad(_uniform(n, -jitter.rotate_degrees, jitter.rotate_degrees, generator))
    shift = _uniform(2 * n, -2 * jitter.shift, 2 * jitter.shift, generator).view(n, 2)
    flip = torch.where(torch.rand(n, generator=generator) < jitter.flip_probability, -1.0, 1.0)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = cos * flip
    theta[:, 0, 1] = -sin
    theta[:, 1, 0] = sin * flip
    theta[:, 1, 1] = cos
    theta[:, :, 2] = shift
    return theta


def box_affine(boxes: torch.Tensor, *, regions: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Matrices that resample ``boxes`` (n, 4: x0, y0, x1, y1) out of arrays covering ``regions`` (n, 4).

    Both are in the same (original pixel) frame; ``flip`` (n,) of +-1 mirrors the output left-right.
    """
    rw = regions[:, 2] - regions[:, 0]
    rh = regions[:, 3] - regions[:, 1]
    bw = boxes[:, 2] - boxes[:, 0]
    bh = boxes[:, 3] - boxes[:, 1]
    theta = torch.zeros(boxes.shape[0], 2, 3)
    theta[:, 0, 0] = bw / rw * flip
    theta[:, 1, 1] = bh / rh
    theta[:, 0, 2] = (2 * (boxes[:, 0] - regions[:, 0]) + bw) / rw - 1
    theta[:, 1, 2] = (2 * (boxes[:, 1] - regions[:, 1]) + bh) / rh - 1
    return theta


def warp(x: torch.Tensor, theta: torch.Tensor, *, size: int, mode: str = "bilinear") -> torch.Tensor:
    """Resample ``x`` (N, C, H, W) through ``theta`` into (N, C, size, size); zeros outside."""
    grid = F.affine_grid(theta.to(x.device, x.dtype), [x.shape[0], x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


def jitter_intensity(x: torch.Tensor, *, jitter: IntensityJitter, generator: torch.Generator) -> torch.Tensor:
    """Per-image gamma, contrast (about the image mean), brightness and Gaussian noise, clipped to [0, 1]."""
    n = x.shape[0]
    shape = (n,) + (1,) * (x.dim() - 1)
    gamma = torch.exp(_uniform(n, math.log(jitter.gamma[0]), math.log(jitter.gamma[1]), generator))
    contrast = _uniform(n, *jitter.contrast, generator)
    brightness = _uniform(n, -jitter.brightness, jitter.brightness, generator)
    sigma = _uniform(n, 0.0, jitter.noise, generator)
    noise = torch.randn(x.shape, generator=generator)
    gamma, contrast, brightness, sigma = (v.view(shape).to(x.device) for v in (gamma, contrast, brightness, sigma))
    out = x.clamp(0.0, 1.0) ** gamma
    mean = out.mean(dim=tuple(range(1, x.dim())), keepdim=True)
    out = (out - mean) * contrast + mean + brightness + sigma * noise.to(x.device)
    return out.clamp(0.0, 1.0)


def acquisition(x: torch.Tensor, *, jitter: "AcquisitionJitter | None", generator: torch.Generator, channels: int = 1) -> torch.Tensor:
    """Real-acquisition jitter (:mod:`cxr_models.train.acquisition`) of the first ``channels`` channels; ``x`` itself when ``jitter`` is None."""
    if jitter is None:
        return x
    from cxr_models.train.acquisition import jitter_acquisition

    return jitter_acquisition(x, jitter=jitter, generator=generator, channels=channels)


def acquisition_from_args(args: object) -> "AcquisitionJitter | None":
    """The trainers' ``--acquisition-jitter`` flag as jitter settings (the module defaults), or None."""
    if not getattr(args, "acquisition_jitter", False):
        return None
    from cxr_models.train.acquisition import AcquisitionJitter

    return AcquisitionJitter()
