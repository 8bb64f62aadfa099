"""DICOM writers: a :class:`~cxr_service.results.StudyResult` → SR, GSPS, SEG and SC datasets.

Each output kind goes into its own new series with deterministic UIDs (:mod:`cxr_service.uids`)
and deterministic dates, so writing the same result twice gives identical objects.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping

import numpy as np
import pydicom

from cxr_service.results import StudyResult
from cxr_service.uids import KIND_GSPS, KIND_SC, KIND_SEG, KIND_SR
from cxr_service.writers.gsps import write_gsps
from cxr_service.writers.sc import write_sc
from cxr_service.writers.seg import write_seg
from cxr_service.writers.sr import write_sr

__all__ = ["write_all", "write_gsps", "write_sc", "write_seg", "write_sr"]


def write_all(
    result: StudyResult,
    sources: Mapping[str, pydicom.Dataset],
    displays: Mapping[str, np.ndarray],
    *,
    created: datetime.datetime | None = None,
) -> dict[str, list[pydicom.Dataset]]:
    """Every output of a study: output kind → datasets (the SR list has one document)."""
    return {
        KIND_SR: [write_sr(result, sources, created=created)],
        KIND_GSPS: list(write_gsps(result, sources, created=created)),
        KIND_SEG: list(write_seg(result, sources, created=created)),
        KIND_SC: list(write_sc(result, sources, displays, created=created)),
    }
