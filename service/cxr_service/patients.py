"""One study is one patient's: the Patient ID is part of a study's identity.

A StudyInstanceUID should name one study of one patient, but PACSes meet the same UID under two
Patient IDs (a modality or RIS error, a study sent again after a patient merge or split).
Orthanc, like most PACSes, then keeps two studies: its study is Patient ID + StudyInstanceUID.
cxr does the same everywhere:

- a job names the patient (``patient_id``); its QIDO-RS query asks for that patient's instances
  only, and every retrieved instance's Patient ID is checked again;
- jobs and results are kept per (StudyInstanceUID, Patient ID) (:func:`study_key`);
- an output never covers instances of two patients: :func:`single_patient` refuses such a set
  in the pipeline before anything is analysed, and again in the writers
  (:func:`cxr_service.writers.write_all`), with :class:`MixedPatients`, a permanent failure;
- output UIDs derive from the Patient ID too (:mod:`cxr_service.uids`), so the two patients'
  outputs never share a UID.

Messages never quote a Patient ID: they name instances and counts.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterable
from pathlib import Path

import pydicom

from cxr_service.failures import PermanentFailure

#: Longest Patient ID accepted. VR LO allows 64 characters, but longer ones exist in PACSes and
#: the writers copy a Patient ID unchanged, so a study carrying one must still be submittable.
PATIENT_ID_MAX_LENGTH = 256


class MixedPatients(PermanentFailure, ValueError):
    """Instances of more than one patient under one StudyInstanceUID: nothing is written for
    them together. Never retried (the same instances fail the same way)."""


def patient_of(ds: pydicom.Dataset | None) -> str | None:
    """The Patient ID of a dataset (``""`` when it has none or an empty one); None without a
    dataset (nothing could be read)."""
    if ds is None:
        return None
    try:
        value = ds.get("PatientID", "")
    except Exception:  # noqa: BLE001 - an unreadable element: treated like a missing one
        return ""
    return str(value or "").strip()


def patient_id_problem(value: str) -> str | None:
    """Why ``value`` cannot be a Patient ID, or None. Never repeats the value."""
    if len(value) > PATIENT_ID_MAX_LENGTH:
        return f"longer than {PATIENT_ID_MAX_LENGTH} characters ({len(value)})"
    if "\\" in value:
        return "contains a backslash (a value separator in DICOM)"
    if any(ord(ch) < 32 and ch != "\x1b" for ch in value):
        return "contains control characters"
    return None


def check_patient_id(value: str | None) -> str | None:
    """``value`` (surrounding spaces removed, as DICOM pads LO) when it is a usable Patient ID;
    raises ValueError with the reason otherwise (pydantic validators use it)."""
    if value is None:
        return None
    problem = patient_id_problem(value)
    if problem is not None:
        raise ValueError(f"not a valid Patient ID: {problem}")
    return value.strip()


def study_key(study_instance_uid: str, patient_id: str | None) -> str:
    """The key jobs and results are kept under: the UID alone when the patient is not known
    (None: jobs and results of earlier versions), else the UID and a hash of the Patient ID (no
    patient data in store keys). UIDs hold digits and dots only, so ``/`` separates."""
    if patient_id is None:
        return study_instance_uid
    return f"{study_instance_uid}/{patient_digest(patient_id)}"


def patient_digest(patient_id: str) -> str:
    """24 hex digits of the Patient ID's SHA-256: names a patient in keys and paths without
    patient data."""
    return hashlib.sha256(patient_id.encode("utf-8", "surrogateescape")).hexdigest()[:24]


def single_patient(patients: Iterable[tuple[str, str | None]], *, study_instance_uid: str, expected: str | None = None) -> str | None:
    """The one Patient ID of ``(label, patient id)`` pairs (None entries: unknown, ignored), or
    None when none is known; raises :class:`MixedPatients` when there are several, or one that
    is not ``expected``. The message names the labels, never the IDs."""
    first: dict[str, str] = {}
    for label, patient in patients:
        if patient is not None and patient not in first:
            first[patient] = label
    if expected is not None:
        others = [label for patient, label in first.items() if patient != expected]
        if others:
            raise MixedPatients(
                f"study {study_instance_uid}: {others[0]} belongs to another patient than the one requested "
                "(its PatientID differs); an output never mixes patients, nothing was written"
            )
        return expected
    if len(first) > 1:
        labels = list(first.values())
        raise MixedPatients(
            f"study {study_instance_uid} holds instances of {len(first)} patients (the PatientID of {labels[1]} "
            f"differs from that of {labels[0]}); an output never mixes patients, nothing was written"
        )
    return next(iter(first), None)


def read_patient_id(path: Path | None = None, data: bytes | None = None) -> str | None:
    """The Patient ID of a DICOM file or its bytes, read from the header alone; None when the
    header cannot be read, or is no instance's (no SOP Instance UID: bytes pydicom read by force)."""
    try:
        source = path if path is not None else io.BytesIO(data or b"")
        ds = pydicom.dcmread(source, stop_before_pixels=True, specific_tags=["PatientID", "SOPInstanceUID"], force=True)
    except Exception:  # noqa: BLE001 - an unreadable file: its patient is unknown (ingest reports it)
        return None
    if "SOPInstanceUID" not in ds:
        return None
    return patient_of(ds)
