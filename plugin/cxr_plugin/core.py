"""What the Orthanc plugin does, without Orthanc: stdlib only, tested against fakes.

Orthanc's callbacks only put work on a queue (:meth:`CxrPlugin.notify_stable_study`,
:meth:`CxrPlugin.request_analysis`); one worker thread does everything that talks to the network:

- on a stable study with CR/DX images that is not already queued or already analysed from the
  same images, mark it ``queued`` in Orthanc's metadata and submit it to the service;
- while the service is down, keep retrying with backoff (the study stays ``queued``);
- follow the submitted jobs and write ``done`` or ``failed`` (with the reason) into the metadata,
  and for a done job the study's triage priority (``cxr-priority``: urgent, priority, unassessed
  or routine; empty while queued or failed);
- at start-up, submit again every study still marked ``queued``, so nothing is lost across
  restarts of Orthanc or the service.

Our own outputs (SR, PR, SEG, SC) never trigger anything: only CR and DX instances count, and a
study whose CR/DX instances have not changed since its analysis is left alone. "Changed" is told
by a fingerprint (``cxr-instances``): a SHA-256 over the sorted (instance id, MD5 of the stored
file) pairs, so a new image, a deleted one, and an instance overwritten in Orthanc with other
pixels (same SOP Instance UID, same instance id, another file) all make the study analysed again.

An Orthanc study is one patient's (Orthanc's study is Patient ID + StudyInstanceUID): the plugin
submits it with its Patient ID, and the service analyses that patient's instances only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

logger = logging.getLogger(__name__)

ANALYSED_MODALITIES = frozenset({"CR", "DX"})
META_STATUS = "cxr-status"
META_REASON = "cxr-reason"
META_JOB = "cxr-job"
META_PRIORITY = "cxr-priority"
STATUS_QUEUED = "queued"
STATUS_DONE = "done"
STATUS_FAILED = "failed"
# Remembered with the job: the fingerprint of the study's CR/DX instances when it was submitted
# (see the module docstring; earlier versions stored their count, which never matches now).
META_INSTANCES = "cxr-instances"


class OrthancApi(Protocol):
    """The slice of Orthanc's REST API the plugin uses (``orthanc.RestApi*`` in Orthanc)."""

    def get_json(self, uri: str) -> Any: ...

    def get_text(self, uri: str) -> str: ...

    def put(self, uri: str, body: str) -> None: ...


class ServiceUnavailable(Exception):
    """The service cannot be reached or answered 5xx/503: try again later."""


class ServiceRefused(Exception):
    """The service refused the request (4xx): retrying will not help."""


@dataclass(frozen=True)
class ServiceConfig:
    url: str
    token: str
    timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url must be an http(s) URL, got {self.url!r}")
        if not self.token:
            raise ValueError("token must not be empty (set CXR_API_TOKEN)")


class ServiceClient:
    """The service's v1 API over urllib (the plugin runs in Orthanc's interpreter: no pip)."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config

    def _call(self, method: str, path: str, body: dict | None = None) -> dict:
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(
            self.config.url.rstrip("/") + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.config.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.config.timeout_s) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            detail = _problem_detail(exc)
            if exc.code >= 500 or exc.code in (401, 403, 429):
                raise ServiceUnavailable(f"HTTP {exc.code}: {detail}") from exc
            raise ServiceRefused(f"HTTP {exc.code}: {detail}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise ServiceUnavailable(f"service unreachable ({type(exc).__name__})") from exc

    def submit(self, study_instance_uid: str, *, force: bool, patient_id: str | None = None) -> dict:
        body: dict[str, Any] = {"study_instance_uid": study_instance_uid, "force": force}
        if patient_id is not None:
            body["patient_id"] = patient_id
        return self._call("POST", "/v1/studies", body)["job"]

    def job(self, job_id: str) -> dict:
        return self._call("GET", f"/v1/jobs/{job_id}")


def _problem_detail(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(exc.read() or b"{}").get("detail", exc.reason))
    except (ValueError, OSError):
        return str(exc.reason)


@dataclass(frozen=True)
class _Submit:
    orthanc_id: str
    force: bool


@dataclass(frozen=True)
class _Check:
    orthanc_id: str


class CxrPlugin:
    """See the module docstring. ``api`` is Orthanc; ``service`` the service client."""

    def __init__(
        self,
        api: OrthancApi,
        service: ServiceClient,
        *,
        retry_initial_s: float = 1.0,
        retry_max_s: float = 30.0,
        poll_s: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.api = api
        self.service = service
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.poll_s = poll_s
        self._sleep = sleep
        self._inbox: queue.Queue[_Submit | _Check | None] = queue.Queue()
        self._tracked: dict[str, str] = {}  # orthanc study id -> job id
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- called from Orthanc's threads: no network I/O here ------------------------------
    def notify_stable_study(self, orthanc_id: str) -> None:
        self._inbox.put(_Check(orthanc_id))

    def request_analysis(self, orthanc_id: str) -> None:
        self._inbox.put(_Submit(orthanc_id, force=True))

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="cxr-plugin", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._inbox.put(None)
        if self._thread is not None:
            self._thread.join(timeout=10)

    # --- the worker thread ---------------------------------------------------------------
    def _run(self) -> None:
        try:
            self.resubmit_queued()
        except Exception:
            logger.exception("cxr: could not scan for studies still queued")
        while not self._stop.is_set():
            try:
                item = self._inbox.get(timeout=self.poll_s)
            except queue.Empty:
                item = None
            if item is not None:
                self._handle(item)
            elif self._stop.is_set():
                break
            self.poll_jobs()

    def _handle(self, item: _Submit | _Check) -> None:
        try:
            if isinstance(item, _Check):
                if self.should_analyse(item.orthanc_id):
                    self.submit(item.orthanc_id, force=False)
            else:
                self.submit(item.orthanc_id, force=item.force)
        except Exception:
            logger.exception("cxr: study %s could not be handled", item.orthanc_id)

    def cr_dx_instances(self, orthanc_id: str) -> list[str]:
        """The Orthanc ids of the study's CR and DX instances."""
        series = self.api.get_json(f"/studies/{orthanc_id}/series")
        return [
            str(instance)
            for s in series
            if str(s.get("MainDicomTags", {}).get("Modality", "")).upper() in ANALYSED_MODALITIES
            for instance in s.get("Instances", [])
        ]

    def fingerprint(self, instances: list[str]) -> str:
        """``<count>:<SHA-256>`` of the sorted (instance id, MD5 of its stored file) pairs."""
        digest = hashlib.sha256()
        for instance in sorted(instances):
            try:
                md5 = self.api.get_text(f"/instances/{instance}/attachments/dicom/md5").strip()
            except Exception:  # noqa: BLE001 - no MD5 (StoreMD5ForAttachments off): the id alone counts
                md5 = "?"
            digest.update(f"{instance}={md5};".encode())
        return f"{len(instances)}:{digest.hexdigest()}"

    def metadata(self, orthanc_id: str) -> dict[str, str]:
        return dict(self.api.get_json(f"/studies/{orthanc_id}/metadata?expand"))

    def set_metadata(self, orthanc_id: str, **values: str) -> None:
        for key, value in values.items():
            self.api.put(f"/studies/{orthanc_id}/metadata/{key.replace('_', '-')}", value)

    def set_priority(self, orthanc_id: str, priority: str) -> None:
        """``cxr-priority``; an Orthanc whose UserMetadata does not declare it (a configuration
        older than the triage) loses this key only, never the status."""
        try:
            self.set_metadata(orthanc_id, cxr_priority=priority)
        except Exception as exc:  # noqa: BLE001 - Orthanc refuses an undeclared metadata name
            logger.warning("cxr: study %s: could not write %s (is it in UserMetadata?): %s", orthanc_id, META_PRIORITY, exc)

    def should_analyse(self, orthanc_id: str) -> bool:
        instances = self.cr_dx_instances(orthanc_id)
        if not instances:
            return False  # not a CR/DX study, or only our own outputs
        meta = self.metadata(orthanc_id)
        status = meta.get(META_STATUS)
        if status == STATUS_QUEUED:
            return False  # already on its way
        if status in (STATUS_DONE, STATUS_FAILED) and meta.get(META_INSTANCES) == self.fingerprint(instances):
            return False  # our outputs arriving, or a repeated notification
        return True

    def submit(self, orthanc_id: str, *, force: bool) -> None:
        study = self.api.get_json(f"/studies/{orthanc_id}")
        uid = str(study["MainDicomTags"]["StudyInstanceUID"])
        # Orthanc's study is one patient's: the service analyses that patient's instances only.
        patient_id = str(study.get("PatientMainDicomTags", {}).get("PatientID", ""))
        fingerprint = self.fingerprint(self.cr_dx_instances(orthanc_id))
        self.set_metadata(orthanc_id, cxr_status=STATUS_QUEUED, cxr_reason="", cxr_instances=fingerprint)
        self.set_priority(orthanc_id, "")
        delay = self.retry_initial_s
        while not self._stop.is_set():
            try:
                job = self.service.submit(uid, force=force, patient_id=patient_id)
                break
            except ServiceUnavailable as exc:
                logger.warning("cxr: study %s: service unavailable (%s); retrying in %.0f s", orthanc_id, exc, delay)
                self._sleep(delay)
                delay = min(self.retry_max_s, delay * 2)
            except ServiceRefused as exc:
                self.set_metadata(orthanc_id, cxr_status=STATUS_FAILED, cxr_reason=f"refused by the service: {exc}")
                logger.error("cxr: study %s refused by the service: %s", orthanc_id, exc)
                return
        else:
            return  # stopping: the study stays queued and is resubmitted at the next start
        self.set_metadata(orthanc_id, cxr_job=str(job["id"]))
        self._tracked[orthanc_id] = str(job["id"])
        logger.info("cxr: study %s submitted as job %s", orthanc_id, job["id"])

    def poll_jobs(self) -> None:
        for orthanc_id, job_id in list(self._tracked.items()):
            try:
                job = self.service.job(job_id)
            except ServiceUnavailable:
                return  # the service is down: look again later
            except ServiceRefused as exc:
                logger.warning("cxr: job %s of study %s unknown to the service (%s); resubmitting", job_id, orthanc_id, exc)
                del self._tracked[orthanc_id]
                self._inbox.put(_Submit(orthanc_id, force=False))
                continue
            state = job.get("state")
            if state == STATUS_DONE:
                self.set_metadata(orthanc_id, cxr_status=STATUS_DONE, cxr_reason=str(job.get("note") or ""))
                self.set_priority(orthanc_id, str(job.get("triage_priority") or ""))
            elif state == STATUS_FAILED:
                self.set_metadata(orthanc_id, cxr_status=STATUS_FAILED, cxr_reason=str(job.get("error") or "failed"))
                logger.warning("cxr: study %s failed: %s", orthanc_id, job.get("error"))
            else:
                continue
            del self._tracked[orthanc_id]

    def resubmit_queued(self) -> int:
        """Submit again every study whose status is still ``queued`` (Orthanc or the service
        stopped before it finished). Returns how many."""
        count = 0
        for orthanc_id in self.api.get_json("/studies"):
            if self._stop.is_set():
                break
            if self.metadata(orthanc_id).get(META_STATUS) == STATUS_QUEUED:
                self._inbox.put(_Submit(orthanc_id, force=False))
                count += 1
        if count:
            logger.info("cxr: %d study(ies) still queued from before: resubmitted", count)
        return count
