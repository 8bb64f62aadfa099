"""DIMSE for PACS without DICOMweb (pynetdicom): a C-STORE SCU for the outputs and the
Storage SCP behind ``cxr scp``.

The SCP writes every received instance, as received, into a spool folder per study and patient
(``<spool>/<StudyInstanceUID>_<patient digest>/<SOPInstanceUID>.dcm``, see
:func:`spool_folder_name`: one study is one patient's, :mod:`cxr_service.patients`, so two
patients' instances sent under one StudyInstanceUID are two studies, analysed apart); a study
with no new instance for ``idle_s`` seconds is closed and handed to ``on_study_closed`` as a
:class:`SpooledStudy`. A handler that raises answers
with a failure status and logs the traceback: the server keeps serving. An instance whose
Study, Series or SOP Instance UID is missing or invalid (:func:`cxr_service.uids.uid_problem`)
is refused with status A900 and the reason in the Error Comment; nothing of it is spooled.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from cxr_service.failures import PermanentFailure, TransientFailure
from cxr_service.outputs import safe_uid_component
from cxr_service.patients import patient_digest, patient_of
from cxr_service.uids import uid_problem

logger = logging.getLogger(__name__)

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_DATASET_DOES_NOT_MATCH = 0xA900
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_PROCESSING_FAILURE = 0x0110


@dataclass(frozen=True)
class RemoteAE:
    ae_title: str
    host: str
    port: int

    def __post_init__(self) -> None:
        if not self.ae_title or len(self.ae_title) > 16:
            raise ValueError(f"ae_title must be 1-16 characters, got {self.ae_title!r}")
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1-65535, got {self.port}")


def send_datasets(datasets: Sequence[pydicom.Dataset], *, destination: RemoteAE, calling_ae_title: str) -> None:
    """C-STORE every dataset to ``destination`` in one association.

    Raises TransientFailure when the association fails or the peer is out of resources, and
    PermanentFailure when it refuses an instance for another reason.
    """
    if not datasets:
        return
    ae = AE(ae_title=calling_ae_title)
    contexts = sorted({(str(ds.SOPClassUID), _transfer_syntax(ds)) for ds in datasets})
    for sop_class, syntax in contexts:
        ae.add_requested_context(sop_class, [syntax, ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
    if not assoc.is_established:
        raise TransientFailure(
            f"C-STORE: no association with {destination.ae_title}@{destination.host}:{destination.port}"
        )
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            code = getattr(status, "Status", None)
            if code is None:
                raise TransientFailure(f"C-STORE: no response from {destination.ae_title} (connection lost)")
            if code in (STATUS_SUCCESS, 0xB000, 0xB007, 0xB006):
                continue
            message = f"C-STORE of a {pydicom.uid.UID(str(ds.SOPClassUID)).name} refused by {destination.ae_title}: status 0x{code:04X}"
            if (code & 0xFF00) == STATUS_OUT_OF_RESOURCES:
                raise TransientFailure(message)
            raise PermanentFailure(message)
    finally:
        assoc.release()
    logger.info("sent %d instance(s) to %s", len(datasets), destination.ae_title)


def _transfer_syntax(ds: pydicom.Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    syntax = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    return str(syntax or ExplicitVRLittleEndian)


@dataclass(frozen=True)
class SpooledStudy:
    """A closed study of the spool: the instances of one patient (``patient_id``, ``""`` for
    instances without one) under one Study Instance UID, in ``folder``."""

    study_instance_uid: str
    patient_id: str
    folder: Path


StudyClosed = Callable[[SpooledStudy], None]


def spool_folder_name(study_instance_uid: str, patient_id: str) -> str:
    """The spool folder of a study and patient: the (safe) UID and the patient's digest, never
    the Patient ID itself (UIDs hold digits and dots only, so ``_`` separates)."""
    return f"{safe_uid_component(study_instance_uid)}_{patient_digest(patient_id)}"


class StorageSCP:
    """The Storage SCP of ``cxr scp`` (C-ECHO and C-STORE of every storage SOP class)."""

    def __init__(self, *, ae_title: str, spool_dir: Path, idle_s: float, on_study_closed: StudyClosed) -> None:
        self.ae_title = ae_title
        self.spool_dir = Path(spool_dir)
        self.spool_dir.mkdir(parents=True, exist_ok=True)
        self.idle_s = idle_s
        self.on_study_closed = on_study_closed
        self._last_seen: dict[tuple[str, str], float] = {}  # (StudyInstanceUID, PatientID) -> last instance
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._server = None
        self._closer: threading.Thread | None = None

    # --- handlers -------------------------------------------------------------------------
    def handle_echo(self, event: evt.Event) -> int:
        return STATUS_SUCCESS

    def handle_store(self, event: evt.Event) -> int | pydicom.Dataset:
        try:
            return self._store(event)
        except OSError as exc:
            logger.exception("C-STORE: cannot write to the spool")
            reason = "disk full" if exc.errno == errno.ENOSPC else f"spool write failed ({exc.strerror})"
            return _status(STATUS_OUT_OF_RESOURCES, reason)
        except Exception:  # a handler must answer, whatever went wrong
            logger.exception("C-STORE: handler failed")
            return _status(STATUS_PROCESSING_FAILURE, "internal error; see the SCP log")

    def _store(self, event: evt.Event) -> int | pydicom.Dataset:
        try:
            ds = event.dataset
            study_uid = str(ds.get("StudyInstanceUID", "") or "").strip()
            sop_uid = str(ds.get("SOPInstanceUID", "") or "").strip()
        except Exception as exc:  # undecodable data set: answer, never crash
            logger.warning("C-STORE: cannot decode the data set: %s", type(exc).__name__)
            return _status(STATUS_CANNOT_UNDERSTAND, f"cannot decode the data set ({type(exc).__name__})")
        if not study_uid:
            logger.warning("C-STORE: refused an instance without StudyInstanceUID")
            return _status(STATUS_DATASET_DOES_NOT_MATCH, "missing StudyInstanceUID")
        if not sop_uid:
            logger.warning("C-STORE: refused an instance without SOPInstanceUID (study %s)", study_uid)
            return _status(STATUS_DATASET_DOES_NOT_MATCH, "missing SOPInstanceUID")
        series_uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
        for keyword, value in (("StudyInstanceUID", study_uid), ("SOPInstanceUID", sop_uid), ("SeriesInstanceUID", series_uid)):
            problem = uid_problem(value) if value or keyword != "SeriesInstanceUID" else None
            if problem is not None:
                # The value itself is not logged: it is whatever the sender put there.
                logger.warning("C-STORE: refused an instance with an invalid %s (%s)", keyword, problem)
                return _status(STATUS_DATASET_DOES_NOT_MATCH, f"invalid {keyword}: {problem}")
        patient = patient_of(ds) or ""
        folder = self.spool_dir / spool_folder_name(study_uid, patient)
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{safe_uid_component(sop_uid)}.dcm"
        tmp = target.with_name(target.name + ".part")
        with tmp.open("wb") as fh:
            fh.write(event.encoded_dataset(include_meta=True))
        os.replace(tmp, target)
        with self._lock:
            self._last_seen[(study_uid, patient)] = time.monotonic()
        return STATUS_SUCCESS

    # --- idle study closing -------------------------------------------------------------
    def close_idle_studies(self, *, now: float | None = None) -> list[str]:
        """Hand over every study idle for ``idle_s``; returns their Study Instance UIDs (a UID
        twice when two patients' studies under it closed)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            idle = [key for key, seen in self._last_seen.items() if now - seen >= self.idle_s]
            for key in idle:
                del self._last_seen[key]
        for uid, patient in idle:
            study = SpooledStudy(study_instance_uid=uid, patient_id=patient, folder=self.spool_dir / spool_folder_name(uid, patient))
            try:
                self.on_study_closed(study)
            except Exception:
                logger.exception("study %s: could not hand over the closed study; retrying", uid)
                with self._lock:
                    self._last_seen.setdefault((uid, patient), now)
        return [uid for uid, _ in idle]

    def pending_studies(self) -> list[str]:
        """Study Instance UIDs with instances received and not yet handed over (one per patient)."""
        with self._lock:
            return sorted(uid for uid, _ in self._last_seen)

    def _closer_loop(self) -> None:
        interval = min(1.0, self.idle_s / 4)
        while not self._stop.wait(interval):
            self.close_idle_studies()

    # --- lifetime -----------------------------------------------------------------------
    def start(self, *, host: str = "0.0.0.0", port: int = 0) -> int:
        """Serve in the background; returns the bound port (``port=0``: any free one)."""
        ae = AE(ae_title=self.ae_title)
        ae.supported_contexts = AllStoragePresentationContexts
        ae.add_supported_context(Verification)
        ae.maximum_pdu_size = 0
        handlers = [(evt.EVT_C_ECHO, self.handle_echo), (evt.EVT_C_STORE, self.handle_store)]
        self._server = ae.start_server((host, port), block=False, evt_handlers=handlers)
        bound = int(self._server.server_address[1])
        self._closer = threading.Thread(target=self._closer_loop, name="scp-study-closer", daemon=True)
        self._closer.start()
        logger.info("Storage SCP %s listening on port %d (study closes after %.1f s idle)", self.ae_title, bound, self.idle_s)
        return bound

    def stop(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
        if self._closer is not None:
            self._closer.join(timeout=5)
        self.close_idle_studies(now=float("inf"))


def _status(code: int, comment: str) -> pydicom.Dataset:
    status = pydicom.Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]
    return status
