"""Heatmaps of an analysed image and the settings that ask for them.

Two maps per analysed frontal image, both float32 in [0, 1] in the image's original pixel grid:

- ``opacity``: the opacity model's probability of opacity per pixel
  (``ImagePrediction.opacity_probability``; 0 outside the lung crop);
- ``attribution``: where the study class comes from, the attribution map of the study
  classifier (:mod:`cxr_models.inference.attribution`, target "abnormal" = 1 - P(negative)),
  relative to its largest value over the study and multiplied by the study's P(abnormal), so a
  study the model finds normal shows a faint map.

:class:`HeatmapOptions` says which outputs use them: the heatmap SEGs (``CXR_HEATMAPS``,
:mod:`cxr_service.writers.heatmap`) and the colour layer of the Secondary Capture
(``CXR_SC_HEATMAP``). Without either, nothing is computed and the outputs are as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from cxr_models.inference.attribution import Attribution
    from cxr_models.inference.pipeline import ImagePrediction

OPACITY = "opacity"
ATTRIBUTION = "attribution"
HEATMAP_NAMES: tuple[str, ...] = (OPACITY, ATTRIBUTION)
ScLayer = Literal["none", "opacity", "attribution"]
SC_LAYERS: tuple[str, ...] = ("none", OPACITY, ATTRIBUTION)
# The attribution target: the logit of 1 - P(negative) (cxr_models.inference.attribution).
ATTRIBUTION_TARGET = "abnormal"
METHOD_TITLES = {"integrated_gradients": "Integrated Gradients", "grad_cam": "Grad-CAM"}


@dataclass(frozen=True)
class Heatmap:
    """One map of an image: its name (:data:`HEATMAP_NAMES`), values (float32 in [0, 1], the
    image's original grid), what the values are (``description``, written into the SEG) and,
    for the attribution, its method (``"integrated_gradients"`` or ``"grad_cam"``)."""

    name: str
    values: np.ndarray = field(repr=False, compare=False)
    description: str
    method: str | None = None

    def __post_init__(self) -> None:
        if self.name not in HEATMAP_NAMES:
            raise ValueError(f"name must be one of {HEATMAP_NAMES}, got {self.name!r}")
        values = self.values
        if not isinstance(values, np.ndarray) or values.ndim != 2 or values.dtype != np.float32:
            raise ValueError(f"values of heatmap {self.name} must be a 2-D float32 array")
        if values.size and (not np.isfinite(values).all() or values.min() < 0.0 or values.max() > 1.0):
            raise ValueError(f"values of heatmap {self.name} must be finite and in [0, 1]")
        if (self.method is None) != (self.name != ATTRIBUTION):
            raise ValueError(f"an attribution heatmap needs its method, and only it: {self.name} with method {self.method!r}")


@dataclass(frozen=True)
class HeatmapOptions:
    """``seg``: write the heatmap SEGs (``CXR_HEATMAPS``); ``sc_layer``: the map blended into
    the Secondary Capture (``CXR_SC_HEATMAP``, ``"none"`` for none)."""

    seg: bool = False
    sc_layer: ScLayer = "none"

    def __post_init__(self) -> None:
        if self.sc_layer not in SC_LAYERS:
            raise ValueError(f"sc_layer must be one of {SC_LAYERS}, got {self.sc_layer!r}")

    @property
    def wanted(self) -> bool:
        """Whether any output uses a heatmap."""
        return self.seg or self.sc_layer != "none"

    @property
    def needs_attribution(self) -> bool:
        """Whether the attribution has to be computed (it costs a backward pass)."""
        return self.seg or self.sc_layer == ATTRIBUTION


NO_HEATMAPS = HeatmapOptions()


def heatmap_of(heatmaps: tuple[Heatmap, ...], name: str) -> Heatmap | None:
    """The heatmap called ``name`` among ``heatmaps``, or None."""
    return next((h for h in heatmaps if h.name == name), None)


def image_heatmaps(prediction: ImagePrediction, attribution: Attribution | None) -> tuple[Heatmap, ...]:
    """The heatmaps of an analysed image: its opacity probability and, when the study was
    attributed, the attribution map times the target's probability (module docstring)."""
    maps: list[Heatmap] = []
    if prediction.opacity_probability is not None:
        values = np.clip(np.asarray(prediction.opacity_probability, dtype=np.float32), 0.0, 1.0)
        maps.append(Heatmap(name=OPACITY, values=values, description="opacity probability"))
    if prediction.attribution is not None and attribution is not None:
        probability = float(attribution.probability)
        values = np.clip(np.asarray(prediction.attribution, dtype=np.float32) * np.float32(probability), 0.0, 1.0)
        title = METHOD_TITLES.get(attribution.method, attribution.method)
        maps.append(
            Heatmap(
                name=ATTRIBUTION,
                values=values.astype(np.float32),
                description=f"{title} of {attribution.target}, relative x P {probability:.2f}",
                method=attribution.method,
            )
        )
    return tuple(maps)
