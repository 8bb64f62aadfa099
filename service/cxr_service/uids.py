"""UIDs: validation of the UIDs that come in, and deterministic UIDs for the DICOM outputs.

Every UID that enters cxr (an API body or path, an ingested instance, a C-STORE) is checked
by :func:`uid_problem` against PS3.5 §9.1: 1-64 characters, components of digits separated by
single dots, and no component with a leading zero (``1.2.03.4`` is refused: ``03`` and ``3``
would be the same number to many systems, and two such UIDs could name one object).

Every UID is a ``2.25.`` UID (ITU-T X.667: the decimal form of a UUID) whose UUID is a
name-based (version 5) UUID of (source UID, model version, output kind, index), so analysing the
same study twice with the same model version gives the same Series and SOP Instance UIDs and a
PACS overwrites the earlier results instead of duplicating them; a new model version gives new
UIDs. Inside :func:`patient_scope` (the writers run in one, see
:func:`cxr_service.writers.write_all`) the Patient ID is part of the name too: two patients'
studies under one StudyInstanceUID (see :mod:`cxr_service.patients`) never share an output UID.

The UUID scheme itself is :func:`cxr_models.uid.name_uid`.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
from collections.abc import Iterator

from cxr_models.uid import name_uid

logger = logging.getLogger(__name__)

UID_MAX_LENGTH = 64
#: A valid UID (PS3.5 §9.1), for JSON schemas and path parameters.
UID_PATTERN = r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$"
_DIGITS = re.compile(r"^[0-9]+$")
# The Patient ID output UIDs are derived for (None or empty: none, the UIDs of earlier versions).
_PATIENT: contextvars.ContextVar[str | None] = contextvars.ContextVar("cxr_output_patient", default=None)


def uid_problem(value: str) -> str | None:
    """Why ``value`` is not a valid DICOM UID, or None when it is one.

    The reason never repeats the value itself (it may be anything a sender put there); it names
    the offending component by position.
    """
    if not value:
        return "empty"
    if len(value) > UID_MAX_LENGTH:
        return f"longer than {UID_MAX_LENGTH} characters ({len(value)})"
    for position, component in enumerate(value.split("."), start=1):
        if not component:
            return f"component {position} is empty"
        if not _DIGITS.match(component):
            return f"component {position} is not all digits"
        if len(component) > 1 and component.startswith("0"):
            return f"component {position} has a leading zero ({component})"
    return None


def check_uid(value: str) -> str:
    """``value`` when it is a valid UID; raises ValueError with the reason otherwise (pydantic
    validators use it, so an API answers 422 naming the field)."""
    problem = uid_problem(value)
    if problem is not None:
        raise ValueError(f"not a valid DICOM UID: {problem}")
    return value

# Output kinds, one new series each.
KIND_SR = "sr"
KIND_GSPS = "gsps"
KIND_SEG = "seg"
KIND_SC = "sc"
KIND_HEATMAP = "heatmap"
OUTPUT_KINDS: tuple[str, ...] = (KIND_SR, KIND_GSPS, KIND_SEG, KIND_SC, KIND_HEATMAP)


def derive_uid(*, source_uid: str, model_version: str, kind: str, index: int = 0) -> str:
    """A UID that depends only on its arguments (``2.25.<decimal>`` form)."""
    if not source_uid:
        raise ValueError(f"source_uid must not be empty, got {source_uid!r}")
    if not model_version:
        raise ValueError(f"model_version must not be empty, got {model_version!r}")
    if not kind:
        raise ValueError(f"kind must not be empty, got {kind!r}")
    if index < 0:
        raise ValueError(f"index must be >= 0, got {index}")
    patient = _PATIENT.get()
    if patient:
        return name_uid(source_uid, model_version, kind, str(index), f"patient:{patient}")
    return name_uid(source_uid, model_version, kind, str(index))


@contextlib.contextmanager
def patient_scope(patient_id: str | None) -> Iterator[None]:
    """Output UIDs derived inside this block (in this thread or task) depend on ``patient_id``
    as well; None or empty leaves them as they are."""
    token = _PATIENT.set(patient_id or None)
    try:
        yield
    finally:
        _PATIENT.reset(token)


def series_uid(*, study_uid: str, model_version: str, kind: str) -> str:
    """Series Instance UID of the output series of ``kind`` for a study and model version."""
    return derive_uid(source_uid=study_uid, model_version=model_version, kind=f"series/{kind}")


def instance_uid(*, source_uid: str, model_version: str, kind: str, index: int = 0) -> str:
    """SOP Instance UID of an output of ``kind`` derived from ``source_uid`` (image or study)."""
    return derive_uid(source_uid=source_uid, model_version=model_version, kind=f"instance/{kind}", index=index)


def device_uid(*, algorithm_name: str, model_version: str) -> str:
    """Device UID identifying the algorithm at a model version (device observer, equipment)."""
    # The algorithm's identity, the same for every patient.
    with patient_scope(None):
        return derive_uid(source_uid=algorithm_name, model_version=model_version, kind="device")
