"""Any DICOMweb PACS through dicomweb-client: QIDO-RS to find a study's CR/DX instances, WADO-RS to
retrieve them, STOW-RS to store the outputs; basic or bearer authentication.

HTTP and connection errors become :class:`TransientFailure` (retry later: 5xx, timeouts, refused
connections, 401/403/429 because credentials and rate limits are fixed by an administrator
without touching the job) or :class:`PermanentFailure` (other 4xx).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import pydicom
import requests
from dicomweb_client import DICOMwebClient

from cxr_service.failures import PermanentFailure, TransientFailure

logger = logging.getLogger(__name__)

ANALYSED_MODALITIES = frozenset({"CR", "DX"})
_RETRYABLE_4XX = frozenset({401, 403, 408, 409, 425, 429})
# QIDO attribute tags (JSON model keys).
_TAG_MODALITY = "00080060"
_TAG_SERIES_UID = "0020000E"
_TAG_SOP_UID = "00080018"


@dataclass(frozen=True)
class InstanceRef:
    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str


@dataclass(frozen=True)
class DicomWebAuth:
    """Basic auth (``username`` and ``password``) or a bearer ``token``; neither for none."""

    username: str | None = None
    password: str | None = None
    token: str | None = None

    def __post_init__(self) -> None:
        if self.token and (self.username or self.password):
            raise ValueError("auth: give either a bearer token or a username and password, not both")
        if bool(self.username) != bool(self.password):
            raise ValueError("auth: username and password must be given together")


def _first_value(item: dict, tag: str) -> str | None:
    values = item.get(tag, {}).get("Value") or []
    return str(values[0]) if values else None


@contextmanager
def _http_errors(what: str, url: str) -> Iterator[None]:
    try:
        yield
    except requests.HTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        message = f"{what}: HTTP {status} from {url}"
        if status is None or status >= 500 or status in _RETRYABLE_4XX:
            raise TransientFailure(message) from exc
        raise PermanentFailure(message) from exc
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise TransientFailure(f"{what}: {url} unreachable ({type(exc).__name__})") from exc


class DicomWebPacs:
    """A DICOMweb endpoint (``url`` is the service root, e.g. ``http://orthanc:8042/dicom-web``)."""

    def __init__(self, url: str, *, auth: DicomWebAuth = DicomWebAuth(), timeout_s: float = 60.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"url must be an http(s) URL, got {url!r}")
        self.url = url.rstrip("/")
        session = requests.Session()
        if auth.token:
            session.headers["Authorization"] = f"Bearer {auth.token}"
        elif auth.username:
            session.auth = (auth.username, auth.password or "")
        self.client = DICOMwebClient(url=self.url, session=session, timeout=timeout_s)
        # Retries belong to the job queue (exponential backoff, visible in the job), not to
        # a blocking loop inside one attempt.
        self.client.set_http_retry_params(retry=False)

    def find_instances(self, study_instance_uid: str, *, patient_id: str | None = None) -> list[InstanceRef]:
        """The study's CR and DX instances (QIDO-RS); our own outputs (SR, PR, SEG, OT) are other
        modalities and never returned. With ``patient_id``, only that patient's (a PACS may hold
        the same StudyInstanceUID under two Patient IDs; the worker checks each retrieved
        instance's Patient ID again). Raises PermanentFailure when the study is unknown."""
        filters = {"PatientID": patient_id} if patient_id is not None else None
        with _http_errors("QIDO-RS series", self.url):
            series = self.client.search_for_series(study_instance_uid=study_instance_uid, search_filters=filters)
        if not series:
            raise PermanentFailure(f"study {study_instance_uid} not found at {self.url}")
        refs: list[InstanceRef] = []
        for item in series:
            series_uid = _first_value(item, _TAG_SERIES_UID)
            if series_uid is None or (_first_value(item, _TAG_MODALITY) or "").upper() not in ANALYSED_MODALITIES:
                continue
            with _http_errors("QIDO-RS instances", self.url):
                instances = self.client.search_for_instances(
                    study_instance_uid=study_instance_uid, series_instance_uid=series_uid, search_filters=filters
                )
            refs += [
                InstanceRef(study_instance_uid, series_uid, sop)
                for sop in sorted(filter(None, (_first_value(i, _TAG_SOP_UID) for i in instances)))
            ]
        return refs

    def retrieve(self, ref: InstanceRef) -> pydicom.Dataset:
        """One instance by WADO-RS, in whatever transfer syntax the server stored. A 404 for an
        instance QIDO-RS just listed says why it may be: Orthanc answers so when it holds the
        SOP Instance UID under two Patient IDs (it cannot tell which one is asked for)."""
        try:
            with _http_errors("WADO-RS", self.url):
                return self.client.retrieve_instance(
                    study_instance_uid=ref.study_instance_uid,
                    series_instance_uid=ref.series_instance_uid,
                    sop_instance_uid=ref.sop_instance_uid,
                    media_types=(("application/dicom", "*"),),
                )
        except PermanentFailure as exc:
            if "HTTP 404" not in str(exc):
                raise
            raise PermanentFailure(
                f"{exc} for instance {ref.sop_instance_uid}, which QIDO-RS listed (a PACS answers so when it holds "
                "that SOP Instance UID under two patients: the UID is then not enough to retrieve it)"
            ) from exc

    def store(self, datasets: Sequence[pydicom.Dataset]) -> None:
        """STOW-RS the datasets; any instance the server refuses fails the call."""
        if not datasets:
            return
        with _http_errors("STOW-RS", self.url):
            response = self.client.store_instances(datasets=list(datasets))
        failed = response.get("FailedSOPSequence") if response is not None else None
        if failed:
            reasons = sorted({str(item.get("FailureReason", "?")) for item in failed})
            raise PermanentFailure(f"STOW-RS: {len(failed)} of {len(datasets)} instances refused (reasons {reasons})")
        logger.info("stored %d instance(s) to %s", len(datasets), self.url)
