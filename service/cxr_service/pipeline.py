"""One study from its instances to its stored result: the one path every door takes.

``cxr analyze`` (files), ``POST /v1/analyze`` (uploaded bytes) and the worker's jobs (DICOMweb
or the `cxr scp` spool) gather a study's instances their own way, then all call
:func:`run_study` with a :class:`StudyRequest`: who asked (:class:`Requester`, and the job's id)
and where the DICOM outputs go (a :class:`Destination`). A fix to ingest, analysis, the writers,
the result document or how results are kept therefore lands in every door at once.

The stages, one function each:

1. :func:`ingest_instance`: one instance → :class:`StudyInstance` (the ingest outcome, the
   header of a rejected instance, a SHA-256 of the instance's bytes);
2. :meth:`AnalysisEngine.analyze <cxr_service.engine.AnalysisEngine.analyze>`: the models,
   then the study's triage priority (:func:`cxr_service.triage.assess`, the engine's thresholds);
3. :func:`cxr_service.outputs.build_outputs`: SR (always, with a reason per image not
   analysed), GSPS, SEG and SC;
4. :meth:`Destination.deliver`: a PACS (STOW-RS or C-STORE), a folder, or nowhere;
5. :func:`result_document` plus :func:`summary_line`, kept by the job store under the
   requester's :class:`~cxr_service.jobs.ResultOrigin` (an upload never replaces a job's result).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

import pydicom

from cxr_service import charsets  # noqa: F401 - corrects pydicom's ISO 2022 IR 58 before anything is read
from cxr_service.analysis import AnalysedStudy
from cxr_service.engine import AnalysisEngine
from cxr_service.ingest import IngestedImage, IngestLimits, IngestResult, Rejected, ingest_bytes, ingest_dataset, ingest_file
from cxr_service.jobs import JobStore, ResultOrigin
from cxr_service.outputs import build_outputs, result_document, write_output_files, write_result_file
from cxr_service.patients import patient_of, single_patient
from cxr_service.triage import assess

logger = logging.getLogger(__name__)

MAX_SUMMARY = 1000
# A reason longer than this is cut in the summary (the SR and result.json keep it whole).
MAX_SUMMARY_REASON = 72
_BULK_TAGS = frozenset(pydicom.tag.Tag(k) for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))


class Requester(StrEnum):
    """Who asked for an analysis; decides whether and where its result is kept."""

    JOB = "job"  # a queued job (DICOMweb or `cxr scp`): kept as the study's job result
    UPLOAD = "upload"  # POST /v1/analyze: kept apart, never replaces a job's result
    CLI = "cli"  # cxr analyze: result.json in a folder, kept nowhere else


_ORIGINS: Mapping[Requester, ResultOrigin] = {Requester.JOB: ResultOrigin.JOB, Requester.UPLOAD: ResultOrigin.UPLOAD}


# --- 1. ingest --------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class InstanceSource:
    """One instance as a door received it: a file, bytes or a parsed dataset (exactly one).
    ``label`` names it in reasons (a file name, ``files[3]``, a SOP Instance UID)."""

    label: str
    path: Path | None = None
    data: bytes | None = field(default=None, repr=False)
    dataset: pydicom.Dataset | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        given = [name for name in ("path", "data", "dataset") if getattr(self, name) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of path, data or dataset, got {given or 'none'}")
        if not self.label:
            raise ValueError(f"label must not be empty, got {self.label!r}")

    @functools.cached_property
    def sha256(self) -> str | None:
        """SHA-256 of the instance's bytes (a parsed dataset: as pydicom writes it), computed once;
        the worker compares it with the last analysis before anything is decoded."""
        if self.path is not None:
            digest = hashlib.sha256()
            with self.path.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
            return digest.hexdigest()
        if self.data is not None:
            return hashlib.sha256(self.data).hexdigest()
        assert self.dataset is not None
        return _dataset_sha256(self.dataset, label=self.label)


@dataclass(frozen=True, eq=False)
class StudyInstance:
    """An instance after ingest: the outcome, the header of a rejected instance when it can be
    read (the SR copies the patient and study from it), and the SHA-256 of its bytes (None when
    it has none: the content could not be fetched)."""

    item: IngestResult
    header: pydicom.Dataset | None = field(default=None, repr=False)
    sha256: str | None = None


def ingest_instance(source: InstanceSource, *, limits: IngestLimits) -> StudyInstance:
    """Ingest one instance; never raises for bad content (see :mod:`cxr_service.ingest`)."""
    if source.path is not None:
        if source.path.stat().st_size > limits.max_file_bytes:
            return StudyInstance(item=ingest_file(source.path, limits=limits))
        data = source.path.read_bytes()
        return _from_bytes(data, label=source.label, limits=limits)
    if source.data is not None:
        return _from_bytes(source.data, label=source.label, limits=limits, sha256=source.sha256)
    assert source.dataset is not None
    ds = source.dataset
    item = ingest_dataset(ds, source=source.label, limits=limits)
    header = _header_only(ds) if isinstance(item, Rejected) and item.sop_instance_uid else None
    return StudyInstance(item=item, header=header, sha256=source.sha256)


def fetch_failed(rejected: Rejected) -> StudyInstance:
    """An instance whose content could not be fetched at all (no header, no digest)."""
    return StudyInstance(item=rejected)


def _from_bytes(data: bytes, *, label: str, limits: IngestLimits, sha256: str | None = None) -> StudyInstance:
    item = ingest_bytes(data, source=label, limits=limits)
    header = _readable_header(data, label=label) if isinstance(item, Rejected) and item.sop_instance_uid else None
    return StudyInstance(item=item, header=header, sha256=sha256 or hashlib.sha256(data).hexdigest())


def _readable_header(data: bytes, *, label: str) -> pydicom.Dataset | None:
    """The header of a rejected instance's bytes, when pydicom can read one."""
    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
    except Exception as exc:  # noqa: BLE001 - third-party parser on bytes ingest already refused
        logger.info("%s: no readable header for the SR (%s)", label, type(exc).__name__)
        return None


def _header_only(ds: pydicom.Dataset) -> pydicom.Dataset:
    header = pydicom.Dataset({tag: element for tag, element in ds.items() if tag not in _BULK_TAGS})
    if hasattr(ds, "file_meta"):
        header.file_meta = ds.file_meta
    return header


def _dataset_sha256(ds: pydicom.Dataset, *, label: str) -> str | None:
    """SHA-256 of a parsed dataset as pydicom writes it (the same stored instance gives the
    same digest; other pixels or header values give another)."""
    buffer = io.BytesIO()
    try:
        pydicom.dcmwrite(buffer, ds, enforce_file_format=False)
    except Exception as exc:  # noqa: BLE001 - a dataset too broken to write has no digest
        logger.info("%s: no content digest (%s); its study is always analysed again", label, type(exc).__name__)
        return None
    return hashlib.sha256(buffer.getvalue()).hexdigest()


# --- 4. destinations -----------------------------------------------------------------------


class Destination(Protocol):
    """Where a study's DICOM outputs go. ``label`` is recorded as the result's ``delivered_to``
    (no credentials; None: no PACS)."""

    @property
    def label(self) -> str | None: ...

    def deliver(self, study_instance_uid: str, datasets: Mapping[str, list[pydicom.Dataset]]) -> Mapping[str, list[str]]:
        """Store the outputs; returns kind → file paths when they were written to files."""

    def keep_result(self, document: Mapping[str, Any]) -> None:
        """Keep the result document next to the outputs (a folder), or nothing."""


@dataclass(frozen=True)
class Nowhere:
    """The outputs are stored nowhere (``POST /v1/analyze``): the result document alone."""

    label: str | None = None

    def deliver(self, study_instance_uid: str, datasets: Mapping[str, list[pydicom.Dataset]]) -> Mapping[str, list[str]]:
        return {}

    def keep_result(self, document: Mapping[str, Any]) -> None:
        return None


@dataclass(frozen=True)
class Folder:
    """``<out_dir>/<StudyInstanceUID>/`` with result.json, sr.dcm, gsps/, seg/, sc/ (``cxr analyze``)."""

    out_dir: Path
    label: str | None = None

    def deliver(self, study_instance_uid: str, datasets: Mapping[str, list[pydicom.Dataset]]) -> Mapping[str, list[str]]:
        _, files = write_output_files(study_instance_uid, datasets, self.out_dir)
        return files

    def keep_result(self, document: Mapping[str, Any]) -> None:
        write_result_file(document, self.out_dir)


@dataclass(frozen=True)
class Pacs:
    """A PACS the worker stores to: ``send`` is STOW-RS or C-STORE (raising a JobFailure)."""

    label: str
    send: Callable[[Sequence[pydicom.Dataset]], None] = field(repr=False)

    def __post_init__(self) -> None:
        if not self.label:
            raise ValueError(f"label must name the PACS, got {self.label!r}")

    def deliver(self, study_instance_uid: str, datasets: Mapping[str, list[pydicom.Dataset]]) -> Mapping[str, list[str]]:
        self.send([ds for kind in datasets.values() for ds in kind])
        return {}

    def keep_result(self, document: Mapping[str, Any]) -> None:
        return None


# --- the request and its run ------------------------------------------------------------------


@dataclass(frozen=True)
class StudyRequest:
    """One study to analyse: its UID, who asked (a job names its id) and where the outputs go.
    ``patient_id``, when given, is the patient whose study it is: an instance of another patient
    fails the run (:class:`~cxr_service.patients.MixedPatients`); without it the instances must
    still all be one patient's."""

    study_instance_uid: str
    requester: Requester
    destination: Destination
    job_id: str | None = None
    patient_id: str | None = None

    def __post_init__(self) -> None:
        if not self.study_instance_uid:
            raise ValueError(f"study_instance_uid must not be empty, got {self.study_instance_uid!r}")
        if (self.requester == Requester.JOB) != bool(self.job_id):
            raise ValueError(f"job_id is required for a job and only for a job, got {self.job_id!r} for {self.requester}")


@dataclass(frozen=True, eq=False)
class StudyRun:
    """What :func:`run_study` made: the result document, its one-line summary (None when every
    image was analysed and every output written) and how many images were analysed."""

    document: Mapping[str, Any]
    summary: str | None
    analysed: int


def unattributed_entry(item: Rejected) -> dict[str, Any]:
    """How every door reports an instance that no study output can reference."""
    return {"source": item.source, "sop_instance_uid": item.sop_instance_uid, "reason": item.reason}


def instance_patients(instances: Iterable[StudyInstance]) -> list[tuple[str, str | None]]:
    """(label, Patient ID) of each instance: from the ingested image's header, else the rejected
    instance's header; None when neither could be read."""
    pairs: list[tuple[str, str | None]] = []
    for number, instance in enumerate(instances):
        item = instance.item
        label = item.sop_instance_uid or getattr(item, "source", None) or f"instance {number + 1}"
        pairs.append((label, patient_of(item.dataset if isinstance(item, IngestedImage) else instance.header)))
    return pairs


def source_digests(instances: Iterable[StudyInstance]) -> dict[str, str]:
    """SOP Instance UID → SHA-256 of each instance that has both (first instance of a UID wins,
    as in the analysis)."""
    digests: dict[str, str] = {}
    for instance in instances:
        uid = instance.item.sop_instance_uid
        if uid and instance.sha256 and uid not in digests:
            digests[uid] = instance.sha256
    return digests


def run_study(
    request: StudyRequest,
    instances: Sequence[StudyInstance],
    *,
    engine: AnalysisEngine,
    store: JobStore | None = None,
    not_attributed: Sequence[Rejected] = (),
    timings_ms: Mapping[str, float] | None = None,
    digests: Mapping[str, str] | None = None,
) -> StudyRun:
    """Analyse one study's instances, write and deliver its outputs, and keep its result.

    ``not_attributed`` are instances of the same request that belong to no study (an upload's
    unreadable files); they are listed in the document. ``timings_ms`` adds the door's own stages
    (e.g. fetch). ``digests`` is the document's ``source_digests`` as the door computed them
    before ingest (the worker's skip rule compares them), by default :func:`source_digests`. A
    job's or an upload's result is kept in ``store``; a CLI run's is not. Failures of the
    destination (a JobFailure) propagate: nothing is kept then. Instances of more than one
    patient (or of another than ``request.patient_id``) raise
    :class:`~cxr_service.patients.MixedPatients` before anything is analysed.
    """
    uid = request.study_instance_uid
    patient = single_patient(instance_patients(instances), study_instance_uid=uid, expected=request.patient_id)
    study = _analyse(request, instances, engine=engine)
    study = dataclasses.replace(study, result=dataclasses.replace(study.result, triage=assess(study.result, engine.triage)))
    outputs, writers_ms = build_outputs(study)
    start = time.perf_counter()
    files = request.destination.deliver(uid, outputs.datasets)
    deliver_ms = (time.perf_counter() - start) * 1000.0

    document = result_document(study, outputs, writers_ms=writers_ms, files=files or None)
    unattributed = [unattributed_entry(r) for r in (*study.unattributed, *not_attributed)]
    summary = summary_line(document, unattributed=unattributed)
    document.update(
        origin=str(request.requester),
        job_id=request.job_id,
        delivered_to=request.destination.label,
        summary=summary,
        not_attributed=unattributed,
        patient_id=patient,
        source_digests=dict(digests) if digests is not None else source_digests(instances),
    )
    document["timings_ms"].update({k: round(float(v), 1) for k, v in {**(timings_ms or {}), "deliver": deliver_ms}.items()})
    request.destination.keep_result(document)
    origin = _ORIGINS.get(request.requester)
    if store is not None and origin is not None:
        store.put_result(document=document, job_id=request.job_id, origin=origin)
    analysed = sum(1 for image in document["images"] if image["analysed"])
    logger.info("study %s (%s): %d of %d image(s) analysed%s", uid, request.requester, analysed, len(document["images"]), f"; {summary}" if summary else "")
    return StudyRun(document=document, summary=summary, analysed=analysed)


def _analyse(request: StudyRequest, instances: Sequence[StudyInstance], *, engine: AnalysisEngine) -> AnalysedStudy:
    items = [instance.item for instance in instances]
    headers = {
        instance.item.sop_instance_uid: instance.header
        for instance in instances
        if isinstance(instance.item, Rejected) and instance.item.sop_instance_uid and instance.header is not None
    }
    return engine.analyze(items, study_instance_uid=request.study_instance_uid, rejected_headers=headers)


def summary_line(document: Mapping[str, Any], *, unattributed: Sequence[Mapping[str, Any]] = ()) -> str | None:
    """One line on what was not analysed and what was not written (None: nothing to say),
    e.g. ``1 of 3 images analysed; not analysed: lateral view; truncated file (2 images)``.
    The job's note, which the Orthanc plugin shows as ``cxr-reason``."""
    images = document["images"]
    reasons = Counter(_short(image["reason"]) for image in images if not image["analysed"])
    reasons.update(_short(entry["reason"]) for entry in unattributed)
    problems = list(document.get("not_written", []))
    if not reasons and not problems:
        return None
    analysed = sum(1 for image in images if image["analysed"])
    total = len(images) + len(unattributed)
    parts = [f"{analysed} of {total} image{'s' if total != 1 else ''} analysed"]
    if reasons:
        parts.append(
            "not analysed: "
            + "; ".join(reason if count == 1 else f"{reason} ({count} images)" for reason, count in reasons.items())
        )
    kinds = Counter(problem["kind"] for problem in problems)
    for kind, count in kinds.items():
        first = _short(next(p["reason"] for p in problems if p["kind"] == kind))
        parts.append(f"{kind.upper()} problem for {count} output{'s' if count != 1 else ''}: {first}")
    line = "; ".join(parts)
    return line if len(line) <= MAX_SUMMARY else line[: MAX_SUMMARY - 3] + "..."


def _short(reason: str) -> str:
    return reason if len(reason) <= MAX_SUMMARY_REASON else reason[: MAX_SUMMARY_REASON - 3] + "..."
