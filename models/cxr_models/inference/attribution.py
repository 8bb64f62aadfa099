"""Where the study class comes from: attribution maps of the study classifier, per frontal image.

Two methods, both explaining the same score ``S``, the logit of the target event:

- ``target="abnormal"`` (default): ``log(1 - P(negative)) - log P(negative)``, i.e.
  ``logsumexp(z_k, k != negative) - z_negative`` of the logits ``z``;
- ``target="predicted"``: the logit of the study's predicted class.

**Integrated Gradients** (``"integrated_gradients"``, the default; Sundararajan et al., ICML
2017) over the three display channels the network reads (image, lung mask, opacity probability;
the coordinate channels are constant), from the all-zero baseline (black image, no lung, no
opacity): ``(x - x0) * mean over the path of dS/dx``, summed over the channels. Its attributions
add up to ``S(x) - S(x0)`` (completeness; :attr:`Attribution.completeness_error` says how far the
midpoint rule with :data:`DEFAULT_STEPS` points is from it) at the network's input resolution
(128x128 over the lung crop). The positive part is then smoothed by a Gaussian of
:data:`REGION_SIGMA` input pixels: each pixel gets the weighted attribution of its neighbourhood
(the total is kept), which removes the pixel-to-pixel noise of input gradients.

**Grad-CAM** (``"grad_cam"``; Selvaraju et al., ICCV 2017) at the output of the last residual
block (what the global average pool and the linear head read): ``ReLU(sum_c alpha_c A_c)`` with
``alpha_c = mean_ij dS/dA_cij``. For this network it coincides with CAM (the pooled features
are a mean of ``A`` over positions and images, so ``dS/dA_cij`` does not depend on ``ij``), but
the layer has 4x4 cells over the crop.

Why Integrated Gradients is the default: the pointing game
(:mod:`cxr_models.evaluation.pointing_game`: does the map's maximum fall inside the true
opacity?) on a PhantomCXR set kept apart for the choice (40 studies, seed 9101, 31 images with an
opacity): Grad-CAM 0.21, Integrated Gradients 0.55 without smoothing and 0.65 with
``REGION_SIGMA`` = 2 (1 and 4 gave 0.61 and 0.65; 8 or 32 path points the same as 16), against
0.03 for a uniform map. Both methods cost one batched forward and backward pass of the small
study network; Integrated Gradients' batch is :data:`DEFAULT_STEPS` times larger.

Each map is resized bilinearly to its crop rectangle and pasted into the original pixel grid (0
outside the crop), then divided by the largest value over the study's images, so the maps of a
study share one scale in [0, 1] (all zero when no position speaks for the target).
:attr:`Attribution.maps` are those relative maps; :attr:`Attribution.probability` is the
probability of the target, which :meth:`Attribution.scaled` multiplies in so that a study the
model finds unlikely abnormal shows a faint map.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from scipy import ndimage

from cxr_models.inference.crop import paste_crop
from cxr_models.inference.study import StudyClassifier, StudyImageInput, crop_channels, network_input
from cxr_models.records import STUDY_LABELS

logger = logging.getLogger(__name__)

Target = Literal["abnormal", "predicted"]
TARGETS: tuple[str, ...] = ("abnormal", "predicted")
Method = Literal["integrated_gradients", "grad_cam"]
METHODS: tuple[str, ...] = ("integrated_gradients", "grad_cam")
DEFAULT_METHOD: Method = "integrated_gradients"
# Points of the Integrated Gradients path integral (midpoint rule).
DEFAULT_STEPS = 16
# Standard deviation, in network input pixels (128 per crop side), of the Gaussian that turns the
# pixel attributions into region attributions (module docstring).
REGION_SIGMA = 2.0
NEGATIVE = "negative"


@dataclass(frozen=True)
class Attribution:
    """The attribution of one study's class: ``maps`` (float32, each image's original size, in
    [0, 1], one scale per study), the ``method``, the ``target`` (``"abnormal"`` or a class label)
    and its probability, the map at the network's resolution per image (``cells``, crop
    coordinates, unnormalised, signed for Integrated Gradients) and, for Integrated Gradients,
    how far the attributions' sum is from S(input) - S(baseline) (``completeness_error``)."""

    method: str
    target: str
    probability: float
    maps: tuple[np.ndarray, ...] = field(repr=False)
    cells: tuple[np.ndarray, ...] = field(repr=False)
    completeness_error: float | None = None

    def scaled(self) -> tuple[np.ndarray, ...]:
        """The maps multiplied by the target's probability (what a display shows)."""
        return tuple((m * np.float32(self.probability)).astype(np.float32) for m in self.maps)


def resolve_target(logits: torch.Tensor, *, target: Target) -> str:
    """What is explained: ``"abnormal"``, or the predicted class label of the study (``logits``:
    (1, classes), the study's actual input)."""
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    return "abnormal" if target == "abnormal" else STUDY_LABELS[int(torch.argmax(logits[0]))]


def target_score(logits: torch.Tensor, name: str) -> torch.Tensor:
    """The logit of ``name`` per row of ``logits`` (studies, classes): for ``"abnormal"``
    ``log(1 - P(negative)) - log P(negative)``, for a class label its own logit."""
    if name == "abnormal":
        negative = STUDY_LABELS.index(NEGATIVE)
        others = torch.cat([logits[:, :negative], logits[:, negative + 1 :]], dim=1)
        return torch.logsumexp(others, dim=1) - logits[:, negative]
    if name not in STUDY_LABELS:
        raise ValueError(f"name must be 'abnormal' or one of {STUDY_LABELS}, got {name!r}")
    return logits[:, STUDY_LABELS.index(name)]


def target_probability(logits: torch.Tensor, name: str) -> float:
    """P(name) of the first study: a class label, or ``"abnormal"`` = 1 - P(negative)."""
    probabilities = torch.softmax(logits.detach().float(), dim=1)[0]
    if name == "abnormal":
        return float(1.0 - probabilities[STUDY_LABELS.index(NEGATIVE)])
    return float(probabilities[STUDY_LABELS.index(name)])


def _one_study(x: torch.Tensor) -> torch.Tensor:
    return torch.zeros(x.shape[0], dtype=torch.long, device=x.device)


def grad_cam_cells(
    model: torch.nn.Module, inputs: torch.Tensor, *, layer: torch.nn.Module, target: Target
) -> tuple[np.ndarray, str, float]:
    """Grad-CAM of one study's images at ``layer``: ((N, h, w) float32 >= 0, target, P(target)).

    ``inputs`` is the network input of the study's N images (one study).
    """
    captured: list[torch.Tensor] = []

    def keep(_module: torch.nn.Module, _inputs: object, output: torch.Tensor) -> None:
        captured.append(output)

    handle = layer.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            x = inputs.detach().float()
            logits = model(x, _one_study(x), 1).float()
            if len(captured) != 1:
                raise RuntimeError(f"the attribution layer ran {len(captured)} times in one forward pass, expected once")
            name = resolve_target(logits, target=target)
            (gradient,) = torch.autograd.grad(target_score(logits, name).sum(), captured[0])
    finally:
        handle.remove()
    features = captured[0].detach().float()
    weights = gradient.float().mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * features).sum(dim=1))
    return cam.cpu().numpy().astype(np.float32), name, target_probability(logits, name)


def integrated_gradients_cells(
    model: torch.nn.Module, channels: torch.Tensor, *, target: Target, steps: int = DEFAULT_STEPS
) -> tuple[np.ndarray, str, float, float]:
    """Integrated Gradients of one study's images over the display channels (image, lung mask,
    opacity probability; baseline all zero), summed over the channels: ((N, H, W) float32 signed
    attributions, target, P(target), S(input) - S(baseline)).

    The path integral is the midpoint rule with ``steps`` points, all of them in one batch (each
    point a study of its own, so the network's per-study pooling keeps them apart). The
    attributions sum to S(input) - S(baseline) up to the rule's error (completeness).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    x = channels.detach().float()
    n = x.shape[0]
    with torch.no_grad():
        logits = model(network_input(x), _one_study(x), 1).float()
        name = resolve_target(logits, target=target)
        baseline = torch.zeros_like(x)
        base_logits = model(network_input(baseline), _one_study(x), 1).float()
        difference = float(target_score(logits, name)[0] - target_score(base_logits, name)[0])
    alphas = (torch.arange(steps, dtype=torch.float32, device=x.device) + 0.5) / steps
    with torch.enable_grad():
        path = (baseline[None] + alphas[:, None, None, None, None] * (x - baseline)[None]).reshape(steps * n, *x.shape[1:])
        path.requires_grad_(True)
        step_index = torch.arange(steps, device=x.device).repeat_interleave(n)
        path_logits = model(network_input(path), step_index, steps).float()
        (gradient,) = torch.autograd.grad(target_score(path_logits, name).sum(), path)
    attributions = gradient.reshape(steps, n, *x.shape[1:]).mean(dim=0) * (x - baseline)
    return (
        attributions.sum(dim=1).detach().cpu().numpy().astype(np.float32),
        name,
        target_probability(logits, name),
        difference,
    )


def default_layer(model: torch.nn.Module) -> torch.nn.Module:
    """The last residual block of the study network's trunk (what the pool and head read)."""
    try:
        return model.trunk.blocks[-1]
    except (AttributeError, IndexError, TypeError) as exc:
        raise ValueError(f"{type(model).__name__} has no trunk.blocks to attribute") from exc


def _maps_in_original_grid(cells: Sequence[np.ndarray], study: Sequence[StudyImageInput]) -> tuple[np.ndarray, ...]:
    """Each image's map (positive part) resized to its crop rectangle and pasted into its original
    grid, divided by the largest value over the study (all zero when nothing is positive)."""
    pasted = [
        paste_crop(np.ascontiguousarray(np.maximum(cell, 0.0), dtype=np.float32), item.crop, shape=np.shape(item.image)).clip(min=0.0)
        for cell, item in zip(cells, study, strict=True)
    ]
    peak = max(float(m.max()) for m in pasted)
    scale = np.float32(1.0 / peak) if peak > 0.0 else np.float32(0.0)
    return tuple((m * scale).astype(np.float32) for m in pasted)


def attribute(
    classifier: StudyClassifier,
    study: Sequence[StudyImageInput],
    *,
    method: Method = DEFAULT_METHOD,
    target: Target = "abnormal",
    steps: int = DEFAULT_STEPS,
    layer: torch.nn.Module | None = None,
) -> Attribution:
    """The attribution of one study's class (``method``: ``"integrated_gradients"`` or
    ``"grad_cam"``) for each of its frontal images, in the images' original pixel grids (see the
    module docstring). ``steps`` is the Integrated Gradients path resolution, ``layer`` the
    Grad-CAM layer (default: the last residual block)."""
    if len(study) == 0:
        raise ValueError("a study needs at least one frontal image to attribute")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    model = classifier.model
    channels = torch.from_numpy(np.stack([crop_channels(item) for item in study])).to(classifier.device)
    completeness: float | None = None
    if method == "grad_cam":
        layer = default_layer(model) if layer is None else layer
        cells, name, probability = grad_cam_cells(model, network_input(channels), layer=layer, target=target)
        regions = list(cells)
    else:
        cells, name, probability, difference = integrated_gradients_cells(model, channels, target=target, steps=steps)
        completeness = float(cells.sum()) - difference
        regions = [ndimage.gaussian_filter(np.maximum(c, 0.0), REGION_SIGMA, mode="constant") for c in cells]
    maps = _maps_in_original_grid(regions, study)
    logger.debug("%s of %d image(s): target %s, P %.3f", method, len(study), name, probability)
    return Attribution(
        method=method, target=name, probability=probability, maps=maps, cells=tuple(cells), completeness_error=completeness
    )


def grad_cam(classifier: StudyClassifier, study: Sequence[StudyImageInput], *, target: Target = "abnormal") -> Attribution:
    """Grad-CAM at the last residual block (:func:`attribute` with ``method="grad_cam"``)."""
    return attribute(classifier, study, method="grad_cam", target=target)
