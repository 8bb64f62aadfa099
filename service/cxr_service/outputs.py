"""Writing a study's outputs to a folder: ``<out>/<StudyInstanceUID>/`` with ``result.json``,
``sr.dcm``, ``gsps/``, ``seg/`` and ``sc/``.

Folder names derived from DICOM values are validated: a StudyInstanceUID that is not a valid UID
never becomes a path component (it cannot climb out of the output folder).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pydicom

from cxr_service.analysis import AnalysedStudy
from cxr_service.results import to_result_json
from cxr_service.uids import KIND_GSPS, KIND_SC, KIND_SEG, KIND_SR
from cxr_service.writers import write_all

logger = logging.getLogger(__name__)

_UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")
RESULT_NAME = "result.json"


def safe_uid_component(uid: str) -> str:
    """``uid`` when it is a valid DICOM UID (digits and dots, at most 64 characters), else a
    hash-based stand-in, so DICOM values never steer a path outside the output folder."""
    if len(uid) <= 64 and _UID_PATTERN.match(uid):
        return uid
    return "invalid-uid-" + hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()[:16]


def _write_dataset(ds: pydicom.Dataset, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    ds.save_as(tmp, enforce_file_format=True)
    os.replace(tmp, path)


def build_outputs(study: AnalysedStudy) -> tuple[dict[str, list[pydicom.Dataset]], float]:
    """Every DICOM output of ``study`` (kind → datasets) and the time the writers took in ms.

    A study in which no image could be read has no outputs: no header carries the patient and
    study attributes that every DICOM output must copy, so result.json alone reports the reasons.
    """
    start = time.perf_counter()
    if study.sources:
        datasets = write_all(study.result, study.sources, study.displays)
    else:
        logger.warning("study %s: no image could be read; only result.json is written", study.result.study_instance_uid)
        datasets = {}
    return datasets, (time.perf_counter() - start) * 1000.0


def result_document(
    study: AnalysedStudy,
    datasets: Mapping[str, list[pydicom.Dataset]],
    *,
    writers_ms: float,
    files: Mapping[str, list[str]] | None = None,
) -> dict[str, Any]:
    """The result.json document of ``study``; ``files`` (kind → paths) when written to a folder."""
    outputs: dict[str, Any] = {}
    for kind in (KIND_SR, KIND_GSPS, KIND_SEG, KIND_SC):
        items = datasets.get(kind, [])
        if not items:
            outputs[kind] = None
            continue
        outputs[kind] = {
            "series_instance_uid": str(items[0].SeriesInstanceUID),
            "sop_instance_uids": [str(ds.SOPInstanceUID) for ds in items],
        }
        if files is not None:
            outputs[kind]["files"] = list(files.get(kind, []))
    document = to_result_json(study.result, outputs=outputs)
    timings = {**study.result.timings_ms, "writers": writers_ms}
    document["timings_ms"] = {k: round(float(v), 1) for k, v in timings.items()}
    return document


def write_study_folder(study: AnalysedStudy, out_dir: Path) -> tuple[Path, dict[str, Any]]:
    """Write every output of ``study`` under ``out_dir``; returns the study folder and result.json."""
    folder = out_dir / safe_uid_component(study.result.study_instance_uid)
    datasets, writers_ms = build_outputs(study)
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, list[str]] = {}
    for kind, items in datasets.items():
        for ds in items:
            if kind == KIND_SR:
                path = folder / "sr.dcm"
            else:
                (folder / kind).mkdir(exist_ok=True)
                path = folder / kind / f"{safe_uid_component(str(ds.SOPInstanceUID))}.dcm"
            _write_dataset(ds, path)
            files.setdefault(kind, []).append(str(path.relative_to(folder)))
    document = result_document(study, datasets, writers_ms=writers_ms, files=files)
    (folder / RESULT_NAME).write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return folder, document


def summarize(document: Mapping[str, Any]) -> str:
    """A line per study for the CLI, then one per image that was not analysed."""
    images = document["images"]
    analysed = sum(1 for i in images if i["analysed"])
    boxes = sum(len(i["opacities"]) for i in images)
    label = document["study"]["label"]
    lines = [
        f"{document['study_instance_uid']}: {label or 'no class (nothing analysed)'}, "
        f"{analysed}/{len(images)} images analysed, {boxes} opacities"
    ]
    lines += [f"  {i['sop_instance_uid']}: not analysed: {i['reason']}" for i in images if not i["analysed"]]
    return "\n".join(lines)
