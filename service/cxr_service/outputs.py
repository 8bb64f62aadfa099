"""A study's DICOM outputs and its result document, and writing them to a folder:
``<out>/<StudyInstanceUID>/`` with ``result.json``, ``sr.dcm``, ``gsps/``, ``seg/`` and ``sc/``.

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
from cxr_service.uids import KIND_GSPS, KIND_HEATMAP, KIND_SC, KIND_SEG, KIND_SR, OUTPUT_KINDS
from cxr_service.writers import OutputProblem, StudyOutputs, write_all

logger = logging.getLogger(__name__)

_UID_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*$")
RESULT_NAME = "result.json"
SR_NAME = "sr.dcm"
NO_HEADER_REASON = "no instance header could be read, and every DICOM output must copy the patient and study from one"


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


def build_outputs(study: AnalysedStudy) -> tuple[StudyOutputs, float]:
    """Every DICOM output of ``study`` and the time the writers took in ms.

    The SR covers every instance, rejected ones included, and takes the patient and study from
    the ingested images' headers, else from the rejected instances' headers. Only a study none
    of whose headers could be read has no outputs (reported as an SR problem): result.json alone
    gives the reasons then.
    """
    start = time.perf_counter()
    headers = study.headers
    if headers:
        outputs = write_all(study.result, headers, study.displays, heatmaps=study.heatmap_options)
    else:
        logger.warning("study %s: no SR: %s", study.result.study_instance_uid, NO_HEADER_REASON)
        outputs = StudyOutputs(
            datasets={}, problems=(OutputProblem(KIND_SR, study.result.study_instance_uid, NO_HEADER_REASON),)
        )
    return outputs, (time.perf_counter() - start) * 1000.0


def result_document(
    study: AnalysedStudy,
    outputs: StudyOutputs,
    *,
    writers_ms: float,
    files: Mapping[str, list[str]] | None = None,
) -> dict[str, Any]:
    """The result.json document of ``study``; ``files`` (kind → paths) when written to a folder.

    ``not_written`` lists the outputs the writers had to leave out (or, for the SR, write without
    image details), with the reason.
    """
    described: dict[str, Any] = {}
    for kind in (KIND_SR, KIND_GSPS, KIND_SEG, KIND_SC, KIND_HEATMAP):
        items = outputs.datasets.get(kind, [])
        if not items:
            if kind != KIND_HEATMAP or study.heatmap_options.seg:
                described[kind] = None
            continue
        described[kind] = {
            "series_instance_uid": str(items[0].SeriesInstanceUID),
            "sop_instance_uids": [str(ds.SOPInstanceUID) for ds in items],
        }
        if kind == KIND_HEATMAP:
            # One series per image and map (OHIF shows one SEG per series).
            described[kind]["series_instance_uids"] = [str(ds.SeriesInstanceUID) for ds in items]
        if files is not None:
            described[kind]["files"] = list(files.get(kind, []))
    document = to_result_json(study.result, outputs=described)
    document["not_written"] = [
        {"kind": p.kind, "sop_instance_uid": p.sop_instance_uid, "reason": p.reason} for p in outputs.problems
    ]
    timings = {**study.result.timings_ms, "writers": writers_ms}
    document["timings_ms"] = {k: round(float(v), 1) for k, v in timings.items()}
    return document


def write_output_files(study_instance_uid: str, datasets: Mapping[str, list[pydicom.Dataset]], out_dir: Path) -> tuple[Path, dict[str, list[str]]]:
    """Write a study's DICOM outputs under ``out_dir``; returns the study folder and kind → paths
    (relative to that folder)."""
    folder = out_dir / safe_uid_component(study_instance_uid)
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, list[str]] = {}
    for kind in OUTPUT_KINDS:
        for ds in datasets.get(kind, []):
            if kind == KIND_SR:
                path = folder / SR_NAME
            else:
                (folder / kind).mkdir(exist_ok=True)
                path = folder / kind / f"{safe_uid_component(str(ds.SOPInstanceUID))}.dcm"
            _write_dataset(ds, path)
            files.setdefault(kind, []).append(str(path.relative_to(folder)))
    return folder, files


def write_result_file(document: Mapping[str, Any], out_dir: Path) -> Path:
    """Write ``document`` as ``<out_dir>/<StudyInstanceUID>/result.json``; returns its path."""
    folder = out_dir / safe_uid_component(str(document["study_instance_uid"]))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / RESULT_NAME
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


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
    lines += [f"  {u['source']}: not analysed: {u['reason']}" for u in document.get("not_attributed", [])]
    lines += [f"  {p['kind'].upper()} of {p['sop_instance_uid']}: {p['reason']}" for p in document.get("not_written", [])]
    return "\n".join(lines)
