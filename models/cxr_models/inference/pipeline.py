"""The whole model pipeline for one study, composed from the stage modules.

view filter (and its out-of-distribution score) -> lung segmentation and crop -> detection
ensemble (WBF) -> opacity segmentation and opacity % -> study classification over the analysed
images. Inputs are display arrays (float32 [0, 1], white = dense); every box and mask comes back
in the original pixel grid.

An image is analysed as a chest only when the view model says frontal, it is not out of
distribution (when the manifest has an ``"ood"`` entry) and its lung mask is plausible; otherwise
its :attr:`ImagePrediction.reason` says why, checked in that order (texts in
:mod:`cxr_models.inference.reasons`). With ``"crop_fallback": true`` in the manifest an image
with an implausible lung mask is analysed on the whole image instead (see
:mod:`cxr_models.inference.crop`).
"""

from __future__ import annotations

import logging
import time
from contextlib import AbstractContextManager, nullcontext
from collections import Counter
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
from cxr_models.inference.attribution import Attribution, Method, Target, attribute
from cxr_models.inference.crop import CropDecision, decide_crop
from cxr_models.inference.ood import OODDetector, load_ood
from cxr_models.inference.reasons import no_lung_fields, view_reason
from cxr_models.records import Box, ScoredBox
from cxr_models.devices import resolve_device
from cxr_models.weights import crop_fallback_enabled, load_manifest, load_state_dict

logger = logging.getLogger(__name__)

STAGES: tuple[str, ...] = ("view", "lungs", "detection", "opacity", "study")


@dataclass(frozen=True)
class ImagePrediction:
    """Everything the models say about one image (original pixel coordinates).

    ``reason`` says why an image is not analysed (None when it is); ``ood_score`` is its
    out-of-distribution score (None without an ``"ood"`` manifest entry); ``crop_fallback`` is
    True only when the manifest enables the fallback and the lung mask was implausible.
    """

    view: str
    view_probabilities: dict[str, float]
    analysed: bool
    reason: str | None = None
    ood_score: float | None = None
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
    # Where the study class comes from (cxr_models.inference.attribution), when asked for.
    attribution: np.ndarray | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class StudyPrediction:
    """The study class over its analysed images (None without one) and each image's result."""

    label: str | None
    probabilities: dict[str, float] | None
    images: tuple[ImagePrediction, ...]
    timings_ms: dict[str, float] = field(default_factory=dict)
    attribution: Attribution | None = field(default=None, compare=False, repr=False)


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
    """The six models (and the OOD Gaussian) loaded once; :meth:`analyze_study` runs a study through every stage."""

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
        ood: OODDetector | None = None,
        crop_fallback: bool = False,
        half_precision: bool = False,
    ) -> None:
        """``half_precision`` runs every stage but the attribution under float16 autocast on ``device``."""
        self.view = view
        self.lungs = lungs
        self.detection = detection
        self.opacity = opacity
        self.study = study
        self.manifest = manifest
        self.device = device
        self.ood = ood
        self.crop_fallback = crop_fallback
        self.half_precision = half_precision

    @classmethod
    def load(
        cls, *, weights_dir: Path | None = None, device: str | torch.device = "auto", half_precision: bool = False
    ) -> "Analyzer":
        """Load every model listed in the manifest of ``weights_dir`` (default: shipped weights);
        ``half_precision``: run them under float16 autocast (meant for CUDA; on the CPU it is slow)."""
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
            ood=load_ood(manifest, weights_dir=weights_dir),
            crop_fallback=crop_fallback_enabled(manifest),
            half_precision=half_precision,
        )
        logger.info(
            "loaded models version %s on %s%s (OOD %s, crop fallback %s)",
            manifest.get("version"),
            dev,
            ", float16 autocast" if half_precision else "",
            "off" if analyzer.ood is None else f"limit {analyzer.ood.threshold:.2f}",
            "on" if analyzer.crop_fallback else "off",
        )
        return analyzer

    @property
    def version(self) -> str:
        return str(self.manifest.get("version", "unknown"))

    def _ood_scores(self, views: Sequence[view_stage.ViewPrediction]) -> list[float | None]:
        """Each image's OOD score from its view features (all None without an OOD Gaussian)."""
        if self.ood is None or not views:
            return [None] * len(views)
        if any(v.features is None for v in views):
            raise ValueError("the OOD score needs the view stage's features, but the view stage gave none")
        return [float(s) for s in self.ood.scores(np.stack([v.features for v in views]))]

    def _precision(self, stage: str) -> AbstractContextManager[object]:
        """Float16 autocast for a model stage when ``half_precision`` (never for the attribution's gradients)."""
        if not self.half_precision or stage == "attribution":
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.float16)

    def analyze_study(
        self,
        images: Sequence[np.ndarray],
        *,
        no_crop_ablation: bool = False,
        attribution: Target | None = None,
        attribution_method: Method | None = None,
    ) -> StudyPrediction:
        """Run every stage on a study's images (display arrays); images that are not frontal, out of
        distribution or without plausible lung fields are not analysed (``reason``). With
        ``attribution`` (``"abnormal"`` or ``"predicted"``) each analysed image also gets the
        attribution map of the study class (:mod:`cxr_models.inference.attribution`; method
        ``attribution_method``, default its DEFAULT_METHOD)."""
        return self.analyze_studies(
            [images], no_crop_ablation=no_crop_ablation, attribution=attribution, attribution_method=attribution_method
        )[0]

    def analyze_studies(
        self,
        studies: Sequence[Sequence[np.ndarray]],
        *,
        no_crop_ablation: bool = False,
        attribution: Target | None = None,
        attribution_method: Method | None = None,
    ) -> list[StudyPrediction]:
        """:meth:`analyze_study` for several studies at once: each model stage runs once over the
        images of every study (in the stage's own batches), the study class once over the studies.

        Each study's ``timings_ms`` holds its share of every stage's time, by its number of images
        in that stage (the shares of a stage add up to its time). ValueError naming
        ``studies[s][i]`` when an image is not a 2-D display array.
        """
        for s, images in enumerate(studies):
            for i, image in enumerate(images):
                if image.ndim != 2:
                    raise ValueError(f"studies[{s}][{i}] must be a 2-D display array, got shape {image.shape}")
        timings: list[dict[str, float]] = [{} for _ in studies]
        refs = [(s, i) for s, images in enumerate(studies) for i in range(len(images))]

        def timed(stage: str, members: Sequence[tuple[int, int]], fn, *a, **kw):  # noqa: ANN001, ANN202 - local helper
            start = time.perf_counter()
            with self._precision(stage):
                out = fn(*a, **kw)
            elapsed = (time.perf_counter() - start) * 1000.0
            shares = Counter(s for s, _ in members)
            for s, n in shares.items():
                timings[s][stage] = timings[s].get(stage, 0.0) + elapsed * n / len(members)
            return out

        images_of = {ref: studies[ref[0]][ref[1]] for ref in refs}
        views = dict(zip(refs, timed("view", refs, self.view.predict, [images_of[r] for r in refs]) if refs else [], strict=True))
        if self.ood is not None:
            scores = dict(zip(refs, timed("ood", refs, self._ood_scores, [views[r] for r in refs]), strict=True))
        else:
            scores = {r: None for r in refs}
        reasons: dict[tuple[int, int], str] = {}
        for ref in refs:
            reason = view_reason(views[ref].label)
            if reason is None and scores[ref] is not None and self.ood is not None:
                reason = self.ood.reason(scores[ref])
            if reason is not None:
                reasons[ref] = reason
        candidates = [r for r in refs if r not in reasons]
        lung_preds: dict[tuple[int, int], lungs_stage.LungPrediction] = {}
        crops: dict[tuple[int, int], CropDecision] = {}
        if candidates:
            predicted = timed("lungs", candidates, self.lungs.predict, [images_of[r] for r in candidates])
            for ref, lp in zip(candidates, predicted, strict=True):
                crop = decide_crop(lp.mask, shape=images_of[ref].shape)
                lung_preds[ref], crops[ref] = lp, crop
                if crop.fallback and not self.crop_fallback:
                    reasons[ref] = no_lung_fields(crop.reason or "no lung mask")
                elif crop.fallback:
                    logger.info("image %d of study: lung crop fallback (%s)", ref[1], crop.reason)
        analysed = [r for r in candidates if r not in reasons]
        for ref, reason in sorted(reasons.items()):
            logger.info("image %d of study not analysed: %s", ref[1], reason)
        per_image: dict[tuple[int, int], ImagePrediction] = {}
        labels: dict[int, tuple[str, dict[str, float]]] = {}
        cams: dict[int, Attribution] = {}
        if analysed:
            frontal_images = [images_of[r] for r in analysed]
            crop_boxes = [crops[r].box for r in analysed]
            masks = [lung_preds[r].mask for r in analysed]
            dets = timed("detection", analysed, self.detection.predict, frontal_images, crops=crop_boxes)
            no_crop: list[Any] | None = None
            if no_crop_ablation:
                whole = [Box(0.0, 0.0, float(img.shape[1]), float(img.shape[0])) for img in frontal_images]
                no_crop = timed("detection_no_crop", analysed, self.detection.predict, frontal_images, crops=whole)
            opac = timed("opacity", analysed, self.opacity.predict, frontal_images, crops=crop_boxes, lung_masks=masks)
            study_inputs: dict[int, list[study_stage.StudyImageInput]] = {}
            for ref, img, m, op, box in zip(analysed, frontal_images, masks, opac, crop_boxes, strict=True):
                item = study_stage.StudyImageInput(image=img, lung_mask=m, opacity_probability=op.probability, crop=box)
                study_inputs.setdefault(ref[0], []).append(item)
            order = sorted(study_inputs)
            study_preds = timed("study", analysed, self.study.predict, [study_inputs[s] for s in order])
            for s, pred in zip(order, study_preds, strict=True):
                labels[s] = (pred.label, dict(pred.probabilities))
                if attribution:
                    method = {} if attribution_method is None else {"method": attribution_method}
                    members = [r for r in analysed if r[0] == s]
                    cams[s] = timed("attribution", members, attribute, self.study, study_inputs[s], target=attribution, **method)
            position = {s: 0 for s in order}
            for k, ref in enumerate(analysed):
                c = crops[ref]
                cam = cams.get(ref[0])
                per_image[ref] = ImagePrediction(
                    view=views[ref].label,
                    view_probabilities=dict(views[ref].probabilities),
                    analysed=True,
                    ood_score=scores[ref],
                    lung_mask=masks[k],
                    lung_box=None if c.fallback else c.box,
                    crop_fallback=c.fallback,
                    crop_reason=c.reason,
                    opacities=tuple(dets[k].boxes),
                    opacities_by_detector={n: tuple(b) for n, b in dets[k].by_detector.items()},
                    opacities_no_crop=None if no_crop is None else tuple(no_crop[k].boxes),
                    opacity_mask=opac[k].mask,
                    opacity_probability=opac[k].probability,
                    opacity_percent=float(opac[k].percent),
                    attribution=None if cam is None else cam.maps[position[ref[0]]],
                )
                position[ref[0]] += 1
        results: list[StudyPrediction] = []
        for s, images in enumerate(studies):
            label, probabilities = labels.get(s, (None, None))
            predictions = tuple(
                per_image.get((s, i))
                or ImagePrediction(
                    view=views[(s, i)].label,
                    view_probabilities=dict(views[(s, i)].probabilities),
                    analysed=False,
                    reason=reasons[(s, i)],
                    ood_score=scores[(s, i)],
                    lung_mask=lung_preds[(s, i)].mask if (s, i) in lung_preds else None,
                    crop_reason=crops[(s, i)].reason if (s, i) in crops else None,
                )
                for i in range(len(images))
            )
            results.append(
                StudyPrediction(
                    label=label, probabilities=probabilities, images=predictions, timings_ms=timings[s], attribution=cams.get(s)
                )
            )
        return results
