"""The whole model pipeline for one study, composed from the stage modules.

view filter -> lung segmentation and crop -> detection ensemble (WBF) -> opacity segmentation and
opacity % -> study classification over the frontal images. Inputs are display arrays (float32
[0, 1], white = dense); every box and mask comes back in the original pixel grid.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cxr_models.inference import detection as detection_stage
from cxr_models.inference import lungs as lungs_stage
from cxr_models.inference import opacity as opacity_stage
from cxr_models.inference import study as study_stage
from cxr_models.inference import view as view_stage
from cxr_models.inference.crop import CropDecision, decide_crop
from cxr_models.records import Box, ScoredBox
from cxr_models.train.common import resolve_device
from cxr_models.weights import load_manifest, load_state_dict

logger = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("view", "lungs", "detection", "opacity", "study")


@dataclass(frozen=True)
class ImagePrediction:
    """Everything the models say about one image (original pixel coordinates)."""

    view: str
    view_probabilities: dict[str, float]
    analysed: bool
    lung_mask: np.ndarray | None = field(default=None, compare=False, repr=False)
    lung_box: Box | None = None
    crop_fallback: bool = False
    crop_reason: str | None = None
    opacities: tuple[ScoredBox, ...] = ()
    opacities_by_detector: dict[str, tuple[ScoredBox, ...]] = field(default_factory=dict)
    opacities_no_crop: tuple[ScoredBox, ...] | None = None
    opacity_mask: np.ndarray | None = field(default=None, compare=False, repr=False)
    opacity_probability: np.ndarray | None = field(default=None, compare=False, repr=False)
    opacity_percent: float | None = None


@dataclass(frozen=True)
class StudyPrediction:
    """The study class over its frontal images (None without a frontal image) and each image's result."""

    label: str | None
    probabilities: dict[str, float] | None
    images: tuple[ImagePrediction, ...]
    timings_ms: dict[str, float] = field(default_factory=dict)


def fusion_settings(manifest: dict) -> dict:
    """The WBF settings chosen on the validation set (manifest ``"fusion"``), else the defaults."""
    fusion = manifest.get("fusion")
    if not fusion:
        return {}
    return {
        "weights": (float(fusion["weights"][0]), float(fusion["weights"][1])),
        "iou_thr": float(fusion["iou_thr"]),
        "conf_type": str(fusion["conf_type"]),
    }


class Analyzer:
    """The six models loaded once; :meth:`analyze_study` runs a study through every stage."""

    def __init__(
        self,
        *,
        view: view_stage.ViewClassifier,
        lungs: lungs_stage.LungSegmenter,
        detection: detection_stage.DetectionEnsemble,
        opacity: opacity_stage.OpacitySegmenter,
        study: study_stage.StudyClassifier,
        manifest: dict[str, Any],
        device: torch.device,
    ) -> None:
        self.view = view
        self.lungs = lungs
        self.detection = detection
        self.opacity = opacity
        self.study = study
        self.manifest = manifest
        self.device = device

    @classmethod
    def load(cls, *, weights_dir: Path | None = None, device: str | torch.device = "auto") -> "Analyzer":
        """Load every model listed in the manifest of ``weights_dir`` (default: shipped weights)."""
        dev = resolve_device(device) if isinstance(device, str) else device
        manifest = load_manifest(weights_dir)

        def state(name: str) -> dict[str, torch.Tensor]:
            return load_state_dict(name, weights_dir=weights_dir, manifest=manifest)

        detector_a = detection_stage.OpacityDetector.from_state_dict(state("detector_a"), arch="a", device=dev)
        detector_b = detection_stage.OpacityDetector.from_state_dict(state("detector_b"), arch="b", device=dev)
        analyzer = cls(
            view=view_stage.ViewClassifier.from_state_dict(state("view"), device=dev),
            lungs=lungs_stage.LungSegmenter.from_state_dict(state("lungs"), device=dev),
            detection=detection_stage.DetectionEnsemble(detector_a, detector_b, **fusion_settings(manifest)),
            opacity=opacity_stage.OpacitySegmenter.from_state_dict(state("opacity"), device=dev),
            study=study_stage.StudyClassifier.from_state_dict(state("study"), device=dev),
            manifest=manifest,
            device=dev,
        )
        logger.info("loaded models version %s on %s", manifest.get("version"), dev)
        return analyzer

    @property
    def version(self) -> str:
        return str(self.manifest.get("version", "unknown"))

    def analyze_study(self, images: Sequence[np.ndarray], *, no_crop_ablation: bool = False) -> StudyPrediction:
        """Run every stage on a study's images (display arrays); non-frontal images are only view-classified."""
        for i, image in enumerate(images):
            if image.ndim != 2:
                raise ValueError(f"images[{i}] must be a 2-D display array, got shape {image.shape}")
        timings: dict[str, float] = {}

        def timed(stage: str, fn, *a, **kw):  # noqa: ANN001, ANN202 - thin local helper
            start = time.perf_counter()
            out = fn(*a, **kw)
            timings[stage] = timings.get(stage, 0.0) + (time.perf_counter() - start) * 1000.0
            return out

        views = timed("view", self.view.predict, list(images)) if images else []
        frontal = [i for i, v in enumerate(views) if v.label == "frontal"]
        frontal_images = [images[i] for i in frontal]
        per_image: dict[int, ImagePrediction] = {}
        label: str | None = None
        probabilities: dict[str, float] | None = None
        if frontal_images:
            lung_preds = timed("lungs", self.lungs.predict, frontal_images)
            crops: list[CropDecision] = [
                decide_crop(lp.mask, shape=img.shape) for lp, img in zip(lung_preds, frontal_images, strict=True)
            ]
            crop_boxes = [c.box for c in crops]
            dets = timed("detection", self.detection.predict, frontal_images, crops=crop_boxes)
            no_crop: list[Any] | None = None
            if no_crop_ablation:
                whole = [Box(0.0, 0.0, float(img.shape[1]), float(img.shape[0])) for img in frontal_images]
                no_crop = timed("detection_no_crop", self.detection.predict, frontal_images, crops=whole)
            opac = timed(
                "opacity", self.opacity.predict, frontal_images, crops=crop_boxes, lung_masks=[lp.mask for lp in lung_preds]
            )
            study_inputs = [
                study_stage.StudyImageInput(
                    image=img, lung_mask=lp.mask, opacity_probability=op.probability, crop=c.box
                )
                for img, lp, op, c in zip(frontal_images, lung_preds, opac, crops, strict=True)
            ]
            study_pred = timed("study", self.study.predict, [study_inputs])[0]
            label, probabilities = study_pred.label, dict(study_pred.probabilities)
            for k, idx in enumerate(frontal):
                c = crops[k]
                if c.fallback:
                    logger.info("image %d of study: lung crop fallback (%s)", idx, c.reason)
                per_image[idx] = ImagePrediction(
                    view=views[idx].label,
                    view_probabilities=dict(views[idx].probabilities),
                    analysed=True,
                    lung_mask=lung_preds[k].mask,
                    lung_box=None if c.fallback else c.box,
                    crop_fallback=c.fallback,
                    crop_reason=c.reason,
                    opacities=tuple(dets[k].boxes),
                    opacities_by_detector={n: tuple(b) for n, b in dets[k].by_detector.items()},
                    opacities_no_crop=None if no_crop is None else tuple(no_crop[k].boxes),
                    opacity_mask=opac[k].mask,
                    opacity_probability=opac[k].probability,
                    opacity_percent=float(opac[k].percent),
                )
        results = tuple(
            per_image.get(i)
            or ImagePrediction(view=v.label, view_probabilities=dict(v.probabilities), analysed=False)
            for i, v in enumerate(views)
        )
        return StudyPrediction(label=label, probabilities=probabilities, images=results, timings_ms=timings)
