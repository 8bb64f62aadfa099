"""Deterministic DICOM UIDs from names.

A ``2.25.`` UID (ITU-T X.667: the decimal form of a UUID) whose UUID is a name-based (version 5)
UUID of the given parts, so the same parts always give the same UID.
``pydicom.uid.generate_uid(prefix=None, entropy_srcs=...)`` cannot be used for this: with
``prefix=None`` pydicom 3 ignores ``entropy_srcs`` and returns a random UUID.
"""

from __future__ import annotations

import uuid

# uuid5(NAMESPACE_URL, "urn:cxr-open-source:dicom-uids")
UID_NAMESPACE = uuid.UUID("c808daa9-e986-577a-8754-aec025d812bc")


def name_uid(*parts: str) -> str:
    """``2.25.<decimal UUID5>`` of ``parts`` (joined with a unit separator); at most 44 characters."""
    if not parts or any(not isinstance(p, str) or not p for p in parts):
        raise ValueError(f"parts must be non-empty strings, got {parts!r}")
    return f"2.25.{uuid.uuid5(UID_NAMESPACE, chr(0x1F).join(parts)).int}"
