"""Deterministic UIDs for the DICOM outputs.

Every UID is a ``2.25.`` UID (ITU-T X.667: the decimal form of a UUID) whose UUID is a
name-based (version 5) UUID of (source UID, model version, output kind, index), so analysing the
same study twice with the same model version gives the same Series and SOP Instance UIDs and a
PACS overwrites the earlier results instead of duplicating them; a new model version gives new
UIDs.

The UUID scheme itself is :func:`cxr_models.uid.name_uid`.
"""

from __future__ import annotations

import logging

from cxr_models.uid import name_uid

logger = logging.getLogger(__name__)

# Output kinds, one new series each.
KIND_SR = "sr"
KIND_GSPS = "gsps"
KIND_SEG = "seg"
KIND_SC = "sc"
OUTPUT_KINDS: tuple[str, ...] = (KIND_SR, KIND_GSPS, KIND_SEG, KIND_SC)


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
    return name_uid(source_uid, model_version, kind, str(index))


def series_uid(*, study_uid: str, model_version: str, kind: str) -> str:
    """Series Instance UID of the output series of ``kind`` for a study and model version."""
    return derive_uid(source_uid=study_uid, model_version=model_version, kind=f"series/{kind}")


def instance_uid(*, source_uid: str, model_version: str, kind: str, index: int = 0) -> str:
    """SOP Instance UID of an output of ``kind`` derived from ``source_uid`` (image or study)."""
    return derive_uid(source_uid=source_uid, model_version=model_version, kind=f"instance/{kind}", index=index)


def device_uid(*, algorithm_name: str, model_version: str) -> str:
    """Device UID identifying the algorithm at a model version (device observer, equipment)."""
    return derive_uid(source_uid=algorithm_name, model_version=model_version, kind="device")
