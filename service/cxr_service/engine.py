"""The loaded models of one process, shared by the API and the embedded worker.

Loading happens once (in the API's lifespan or on a worker's first job), never at import;
inference is serialised by a lock so the API's uploads and the worker's jobs can share one set
of models without doubling memory.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

import pydicom

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
    ) -> None:
        self.analyzer = analyzer
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
    ) -> AnalysisEngine:
        """Load the weights (None: the shipped demo weights) onto ``device``; ``min_score`` None
        means the manifest's reporting threshold, ``triage`` None the default thresholds."""
        analyzer = Analyzer.load(weights_dir=weights_dir, device=device)
        engine = cls(
            analyzer,
            min_score=report_min_score(analyzer.manifest, min_score),
            limits=IngestLimits(max_pixels=max_pixels),
            triage=triage,
            heatmaps=heatmaps,
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
        with self._lock:
            return analyze_study(
                items,
                study_instance_uid=study_instance_uid,
                analyzer=self.analyzer,
                algorithm=self.algorithm,
                ingest_ms=ingest_ms,
                min_score=self.min_score,
                rejected_headers=rejected_headers,
                heatmaps=self.heatmaps,
            )


class LazyEngine:
    """Loads the models on first use (a worker that never gets a job never loads them)."""

    def __init__(self, settings: Settings, *, engine: AnalysisEngine | None = None) -> None:
        self.settings = settings
        self._engine = engine
        self._lock = threading.Lock()

    def get(self) -> AnalysisEngine:
        with self._lock:
            if self._engine is None:
                self._engine = AnalysisEngine.load(self.settings)
            return self._engine
