"""One study through the whole pipeline: ingested images -> models -> typed StudyResult.

The model stages themselves (view, lungs and crop, detection ensemble, opacity %, study class)
live one module each in :mod:`cxr_models.inference` and are composed by
:class:`cxr_models.inference.pipeline.Analyzer`; this module adds what the service needs around
them: ingest rejections, skip reasons, deduplication, algorithm identification and timings.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pydicom

from cxr_models.inference.attribution import Attribution
from cxr_models.inference.pipeline import Analyzer, ImagePrediction
from cxr_models.inference.reasons import view_reason
from cxr_models.weights import reporting_threshold
from cxr_service.heatmaps import ATTRIBUTION_TARGET, NO_HEATMAPS, HeatmapOptions, image_heatmaps
from cxr_service.ingest import IngestedImage, IngestResult, Rejected
from cxr_service.results import AlgorithmInfo, ImageResult, Opacity, StudyResult

logger = logging.getLogger(__name__)

ALGORITHM_NAME = "cxr"
# Fused opacity boxes scoring below the reporting threshold are not reported. The detectors keep
# low-scoring boxes (down to 0.05) because mAP needs the whole ranking; a report needs a decision.
# The threshold is the weights manifest's "reporting_threshold" (chosen on validation data), an
# explicit setting overrides it, and this is the fallback when the manifest has none.
REPORT_MIN_SCORE = 0.3
REASON_DUPLICATE = "duplicate SOP Instance UID in the study (first instance kept)"


@dataclass(frozen=True, eq=False)
class AnalysedStudy:
    """A study's typed result plus what the DICOM writers need from its sources.

    ``sources`` are the headers of the ingested images, ``rejected_headers`` those of rejected
    instances that could still be read (the SR takes the patient and study from them when no
    image was ingested), ``unattributed`` the rejected instances without SOP Instance UID.
    """

    result: StudyResult
    sources: Mapping[str, pydicom.Dataset] = field(repr=False)
    displays: Mapping[str, np.ndarray] = field(repr=False)
    unattributed: tuple[Rejected, ...] = ()
    rejected_headers: Mapping[str, pydicom.Dataset] = field(default_factory=dict, repr=False)
    heatmap_options: HeatmapOptions = NO_HEATMAPS

    @property
    def headers(self) -> dict[str, pydicom.Dataset]:
        """Every header the writers may copy from: ingested images first, then rejected ones."""
        return {**self.sources, **{uid: ds for uid, ds in self.rejected_headers.items() if uid not in self.sources}}


def algorithm_info(manifest: Mapping[str, Any]) -> AlgorithmInfo:
    """The algorithm identification written into every output, from the weights manifest."""
    return AlgorithmInfo(
        name=ALGORITHM_NAME,
        version=str(manifest["version"]),
        model_uids={name: str(entry["uid"]) for name, entry in sorted(manifest["models"].items())},
        demo_weights=bool(manifest.get("demo", False)),
    )


def report_min_score(manifest: Mapping[str, Any], override: float | None = None) -> float:
    """The lowest fused opacity score reported: ``override`` when given, else the manifest's
    ``"reporting_threshold"`` score, else :data:`REPORT_MIN_SCORE`."""
    if override is not None:
        if not 0.0 <= override <= 1.0:
            raise ValueError(f"min_score must be in [0, 1], got {override!r}")
        return float(override)
    chosen = reporting_threshold(dict(manifest))
    return REPORT_MIN_SCORE if chosen is None else chosen


def _image_result(
    image: IngestedImage,
    prediction: ImagePrediction,
    *,
    min_score: float,
    heatmaps: HeatmapOptions = NO_HEATMAPS,
    attribution: Attribution | None = None,
) -> ImageResult:
    identity = {
        "sop_instance_uid": image.sop_instance_uid,
        "series_instance_uid": image.series_instance_uid,
        "sop_class_uid": image.sop_class_uid,
        "view": prediction.view,
        "view_probabilities": prediction.view_probabilities,
        "ood_score": prediction.ood_score,
    }
    if not prediction.analysed:
        reason = prediction.reason or view_reason(prediction.view) or "not analysed by the models"
        return ImageResult(**identity, analysed=False, reason=reason)
    return ImageResult(
        **identity,
        analysed=True,
        lung_box=prediction.lung_box,
        crop_fallback=prediction.crop_fallback,
        opacities=tuple(
            Opacity(box=o.box, score=min(1.0, float(o.score))) for o in prediction.opacities if o.score >= min_score
        ),
        opacity_percent=None if prediction.opacity_percent is None else min(100.0, max(0.0, prediction.opacity_percent)),
        lung_mask=None if prediction.lung_mask is None else prediction.lung_mask.astype(bool),
        opacity_mask=None if prediction.opacity_mask is None else prediction.opacity_mask.astype(bool),
        heatmaps=image_heatmaps(prediction, attribution) if heatmaps.wanted else (),
    )


def _rejected_result(item: Rejected) -> ImageResult:
    assert item.sop_instance_uid is not None
    return ImageResult(
        sop_instance_uid=item.sop_instance_uid,
        series_instance_uid=item.series_instance_uid or "",
        sop_class_uid=item.sop_class_uid or "",
        view=None,
        view_probabilities={},
        analysed=False,
        reason=item.reason,
    )


def analyze_study(
    items: Sequence[IngestResult],
    *,
    study_instance_uid: str,
    analyzer: Analyzer,
    algorithm: AlgorithmInfo,
    ingest_ms: float = 0.0,
    min_score: float | None = None,
    rejected_headers: Mapping[str, pydicom.Dataset] | None = None,
    heatmaps: HeatmapOptions = NO_HEATMAPS,
) -> AnalysedStudy:
    """Run the models over a study's ingested images (batched) and assemble its StudyResult.

    Rejected items keep their ingest reason; a rejected item without a SOP Instance UID cannot be
    referenced from the study's outputs and is returned in ``unattributed``. ``min_score`` (None:
    :func:`report_min_score` of the analyzer's manifest) is the lowest opacity score reported.
    ``rejected_headers`` (SOP Instance UID → header) are kept for the writers. ``heatmaps``
    says which outputs use heatmaps (the attribution is computed only when one does).
    """
    if min_score is None:
        min_score = report_min_score(analyzer.manifest)
    seen: set[str] = set()
    images: list[IngestedImage] = []
    order: list[IngestedImage | Rejected] = []
    unattributed: list[Rejected] = []
    for item in items:
        uid = item.sop_instance_uid
        if uid is None:
            unattributed.append(item)  # type: ignore[arg-type]
            continue
        if uid in seen:
            logger.warning("study %s: %s: %s", study_instance_uid, uid, REASON_DUPLICATE)
            continue
        seen.add(uid)
        order.append(item)
        if isinstance(item, IngestedImage):
            images.append(item)

    start = time.perf_counter()
    attribution = ATTRIBUTION_TARGET if heatmaps.needs_attribution else None
    prediction = analyzer.analyze_study([im.display for im in images], attribution=attribution) if images else None
    model_ms = (time.perf_counter() - start) * 1000.0
    by_uid = {}
    if prediction is not None:
        by_uid = {im.sop_instance_uid: p for im, p in zip(images, prediction.images, strict=True)}

    results = [
        _image_result(
            item,
            by_uid[item.sop_instance_uid],
            min_score=min_score,
            heatmaps=heatmaps,
            attribution=None if prediction is None else prediction.attribution,
        )
        if isinstance(item, IngestedImage)
        else _rejected_result(item)
        for item in order
    ]
    for r in results:
        if not r.analysed:
            logger.info("study %s: image %s not analysed: %s", study_instance_uid, r.sop_instance_uid, r.reason)
    timings = {"ingest": ingest_ms, **(prediction.timings_ms if prediction else {}), "models_total": model_ms}
    result = StudyResult(
        study_instance_uid=study_instance_uid,
        algorithm=algorithm,
        study_label=prediction.label if prediction else None,
        study_probabilities=prediction.probabilities if prediction else None,
        images=tuple(results),
        timings_ms=timings,
        unattributed=tuple(item.reason for item in unattributed),
    )
    rejected = {r.sop_instance_uid for r in results if not r.analysed}
    return AnalysedStudy(
        result=result,
        sources={im.sop_instance_uid: im.dataset for im in images},
        displays={im.sop_instance_uid: im.display for im in images},
        unattributed=tuple(unattributed),
        rejected_headers={uid: ds for uid, ds in (rejected_headers or {}).items() if uid in rejected},
        heatmap_options=heatmaps,
    )
