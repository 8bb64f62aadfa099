"""DICOM writers: a :class:`~cxr_service.results.StudyResult` → SR, GSPS, SEG and SC datasets.

Each output kind goes into its own new series with deterministic UIDs (:mod:`cxr_service.uids`)
and deterministic dates, so writing the same result twice gives identical objects. Source
headers are checked before anything is copied from them (:mod:`cxr_service.writers.sources`).
"""

from __future__ import annotations

import datetime
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import pydicom

from cxr_service.heatmaps import NO_HEATMAPS, Heatmap, HeatmapOptions
from cxr_service.patients import patient_of, single_patient
from cxr_service.results import ImageResult, StudyResult
from cxr_service.uids import KIND_GSPS, KIND_HEATMAP, KIND_SC, KIND_SEG, KIND_SR, OUTPUT_KINDS, patient_scope
from cxr_service.writers.common import WRITER_ERRORS, creation_datetime, identifying_header
from cxr_service.writers.gsps import gsps_for_image, write_gsps
from cxr_service.writers.heatmap import heatmap_segs_for_image, sc_layer_values
from cxr_service.writers.sc import sc_for_image, write_sc
from cxr_service.writers.seg import seg_for_image, write_seg
from cxr_service.writers.sources import writable_sources
from cxr_service.writers.sr import write_sr

__all__ = ["OutputProblem", "StudyOutputs", "describe_error", "write_all", "write_gsps", "write_sc", "write_seg", "write_sr"]

logger = logging.getLogger(__name__)

_MAX_REASON = 200
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")


@dataclass(frozen=True)
class OutputProblem:
    """An output that could not be written as intended: its kind, the image (the study's UID
    for the SR) and why. The other outputs are written regardless."""

    kind: str
    sop_instance_uid: str
    reason: str


@dataclass(frozen=True, eq=False)
class StudyOutputs:
    """Every output of a study (kind → datasets, the SR list has one document) and the problems."""

    datasets: Mapping[str, list[pydicom.Dataset]]
    problems: tuple[OutputProblem, ...] = ()


def describe_error(exc: BaseException, headers: Iterable[pydicom.Dataset] = ()) -> str:
    """A writer error for logs and results without patient data: quoted values and every text
    value of ``headers`` are blanked out of the message."""
    message = _QUOTED.sub("'…'", " ".join(str(exc).split()))
    for ds in headers:
        for element in ds:
            if element.VR in ("PN", "LO", "SH", "DA", "TM", "DT", "ST", "LT", "UT", "UC", "AS", "CS"):
                value = str(element.value or "")
                if len(value) >= 3 and value in message:
                    message = message.replace(value, "…")
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    return text if len(text) <= _MAX_REASON else text[: _MAX_REASON - 3] + "..."


def write_all(
    result: StudyResult,
    sources: Mapping[str, pydicom.Dataset],
    displays: Mapping[str, np.ndarray],
    *,
    created: datetime.datetime | None = None,
    heatmaps: HeatmapOptions = NO_HEATMAPS,
) -> StudyOutputs:
    """Every output of a study (:func:`_write_all`), for one patient only: sources of two
    Patient IDs raise :class:`~cxr_service.patients.MixedPatients` before anything is written.
    The output UIDs are derived for that patient (:func:`cxr_service.uids.patient_scope`; a
    writer run in another thread must run in a copy of this context)."""
    patient = single_patient(
        ((uid, patient_of(ds)) for uid, ds in sources.items()), study_instance_uid=result.study_instance_uid
    )
    with patient_scope(patient):
        return _write_all(result, sources, displays, created=created, heatmaps=heatmaps)


def _write_all(
    result: StudyResult,
    sources: Mapping[str, pydicom.Dataset],
    displays: Mapping[str, np.ndarray],
    *,
    created: datetime.datetime | None = None,
    heatmaps: HeatmapOptions = NO_HEATMAPS,
) -> StudyOutputs:
    """Every output of a study; one image's header never breaks another image's outputs.

    ``sources`` holds the header of every analysed image, and may hold those of skipped ones
    (the SR takes the patient and study from them when no image was analysed). A per-image
    output (GSPS, SEG, SC) that cannot be written is left out and reported as an
    :class:`OutputProblem`; an SR that cannot be written with the full headers is written from
    their identifying attributes alone (also reported). Only an SR that cannot be written even
    so raises. ``heatmaps`` adds the heatmap SEGs (kind ``heatmap``, several per image; the kind
    is left out without them) and the SC's colour layer, from each image's :attr:`~cxr_service.results.ImageResult.heatmaps`.
    """
    checked = writable_sources(sources)
    created = creation_datetime(checked) if created is None else created
    problems: list[OutputProblem] = []
    try:
        sr = write_sr(result, checked, created=created)
    except WRITER_ERRORS as exc:
        reason = describe_error(exc, sources.values())
        logger.error(
            "study %s: SR not writable from the full headers (%s); writing it from their identifying attributes",
            result.study_instance_uid,
            reason,
        )
        problems.append(OutputProblem(KIND_SR, result.study_instance_uid, f"written without image details: {reason}"))
        sr = write_sr(result, {uid: identifying_header(ds) for uid, ds in checked.items()}, created=created)

    def sc_layer(image: ImageResult) -> Heatmap | None:
        if heatmaps.sc_layer == "none":
            return None
        return sc_layer_values(image, heatmaps.sc_layer, displays[image.sop_instance_uid].shape)

    per_image: dict[str, Callable[[ImageResult, int], pydicom.Dataset | list[pydicom.Dataset] | None]] = {
        KIND_GSPS: lambda image, number: gsps_for_image(result, image, checked, number=number, created=created),
        KIND_SEG: lambda image, number: seg_for_image(result, image, checked, number=number, created=created),
        KIND_SC: lambda image, number: sc_for_image(
            result, image, checked, displays[image.sop_instance_uid], number=number, created=created, heatmap=sc_layer(image)
        ),
    }
    if heatmaps.seg:
        per_image[KIND_HEATMAP] = lambda image, number: heatmap_segs_for_image(result, image, checked, created=created)
    datasets: dict[str, list[pydicom.Dataset]] = {KIND_SR: [sr]}
    for kind, write in per_image.items():
        written: list[pydicom.Dataset] = []
        for image in result.analysed_images:
            try:
                ds = write(image, len(written) + 1)
            except WRITER_ERRORS as exc:
                reason = describe_error(exc, [sources[image.sop_instance_uid]])
                logger.error(
                    "study %s: no %s for image %s: %s", result.study_instance_uid, kind.upper(), image.sop_instance_uid, reason
                )
                problems.append(OutputProblem(kind, image.sop_instance_uid, reason))
                continue
            if isinstance(ds, list):
                written.extend(ds)
            elif ds is not None:
                written.append(ds)
        datasets[kind] = written
    assert set(datasets) == set(OUTPUT_KINDS) - (set() if heatmaps.seg else {KIND_HEATMAP})
    return StudyOutputs(datasets=datasets, problems=tuple(problems))
