"""The loaded models of one process, shared by the API and the embedded worker.

Loading happens once (in the API's lifespan or on a worker's first job), never at import.
The API's uploads and the worker's jobs share one set of models without doubling memory:
inference is serialised by a lock, or, with ``batch_max_images`` > 1, by a
:class:`~cxr_models.inference.batching.StudyBatcher` that also runs the studies in flight
together, one model pass per stage.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import pydicom

from cxr_models.inference.batching import StudyBatcher
from cxr_models.inference.pipeline import Analyzer
from cxr_service.analysis import AnalysedStudy, algorithm_info, analyze_study, report_min_score
from cxr_service.heatmaps import NO_HEATMAPS, HeatmapOptions
from cxr_service.ingest import IngestLimits, IngestResult
from cxr_service.results import AlgorithmInfo
from cxr_service.settings import Settings
from cxr_service.triage import TriageThresholds

logger = logging.getLogger(__name__)


class AnalysisEngine:
    """An :class:`Analyzer` plus the service's reporting settings (opacities reported from
    ``min_score``, the triage thresholds, which outputs get heatmaps)."""

    def __init__(
        self,
        analyzer: Analyzer,
        *,
        min_score: float,
        limits: IngestLimits,
        triage: TriageThresholds | None = None,
        heatmaps: HeatmapOptions = NO_HEATMAPS,
        batcher: StudyBatcher | None = None,
    ) -> None:
        """``batcher`` (wrapping ``analyzer``) batches concurrent studies instead of the lock."""
        if batcher is not None and batcher.analyzer is not analyzer:
            raise ValueError("batcher must wrap the engine's analyzer")
        self.analyzer = analyzer
        self.batcher = batcher
        self.min_score = min_score
        self.limits = limits
        self.triage = triage or TriageThresholds()
        self.heatmaps = heatmaps
        self.algorithm: AlgorithmInfo = algorithm_info(analyzer.manifest)
        self._lock = threading.Lock()

    @classmethod
    def create(
        cls,
        *,
        weights_dir: Path | None,
        device: str,
        min_score: float | None,
        max_pixels: int,
        triage: TriageThresholds | None = None,
        heatmaps: HeatmapOptions = NO_HEATMAPS,
        half_precision: bool = False,
        batch_max_images: int = 1,
        batch_max_wait_ms: float = 10.0,
    ) -> AnalysisEngine:
        """Load the weights (None: the shipped demo weights) onto ``device``; ``min_score`` None
        means the manifest's reporting threshold, ``triage`` None the default thresholds.
        ``batch_max_images`` > 1 batches concurrent studies (:class:`StudyBatcher`)."""
        analyzer = Analyzer.load(weights_dir=weights_dir, device=device, half_precision=half_precision)
        batcher = (
            StudyBatcher(analyzer, max_images=batch_max_images, max_wait_ms=batch_max_wait_ms)
            if batch_max_images > 1
            else None
        )
        engine = cls(
            analyzer,
            min_score=report_min_score(analyzer.manifest, min_score),
            limits=IngestLimits(max_pixels=max_pixels),
            triage=triage,
            heatmaps=heatmaps,
            batcher=batcher,
        )
        logger.info(
            "models %s loaded on %s, opacities reported from score %.3f", engine.model_version, analyzer.device, engine.min_score
        )
        return engine

    @classmethod
    def load(cls, settings: Settings) -> AnalysisEngine:
        return cls.create(
            weights_dir=settings.weights_dir,
            device=settings.device,
            min_score=settings.min_score,
            max_pixels=settings.max_pixels,
            triage=TriageThresholds.from_settings(settings),
            heatmaps=HeatmapOptions(seg=settings.heatmaps, sc_layer=settings.sc_heatmap),
            half_precision=settings.half_precision,
            batch_max_images=settings.batch_max_images,
            batch_max_wait_ms=settings.batch_max_wait_ms,
        )

    @property
    def model_version(self) -> str:
        return self.algorithm.version

    def analyze(
        self,
        items: Sequence[IngestResult],
        *,
        study_instance_uid: str,
        ingest_ms: float = 0.0,
        rejected_headers: Mapping[str, pydicom.Dataset] | None = None,
    ) -> AnalysedStudy:
        def run(analyzer: Analyzer | StudyBatcher) -> AnalysedStudy:
            return analyze_study(
                items,
                study_instance_uid=study_instance_uid,
                analyzer=analyzer,  # type: ignore[arg-type] - a StudyBatcher answers as an Analyzer does
                algorithm=self.algorithm,
                ingest_ms=ingest_ms,
                min_score=self.min_score,
                rejected_headers=rejected_headers,
                heatmaps=self.heatmaps,
            )

        if self.batcher is not None:
            return run(self.batcher)
        with self._lock:
            return run(self.analyzer)

    def close(self) -> None:
        """Stop the batcher's thread (after the batches already asked for); nothing to do without one."""
        if self.batcher is not None:
            self.batcher.close()


class LazyEngine:
    """Loads the models on first use (a worker that never gets a job never loads them)."""

    def __init__(self, settings: Settings, *, engine: AnalysisEngine | None = None) -> None:
        self.settings = settings
        self._engine = engine
        self._owned = engine is None
        self._lock = threading.Lock()

    def get(self) -> AnalysisEngine:
        with self._lock:
            if self._engine is None:
                self._engine = AnalysisEngine.load(self.settings)
            return self._engine

    def close(self) -> None:
        """Close the engine if this object loaded it (one passed in belongs to its owner)."""
        with self._lock:
            if self._engine is not None and self._owned:
                self._engine.close()
