"""``cxr scp``: a DICOM Storage SCP (C-STORE, C-ECHO) that analyses each received study.

A study is closed after ``CXR_SCP_IDLE_S`` seconds without a new instance and queued as a job
on this SCP's own queue (its spool is a local folder, so its own worker runs it; the job
store is shared, so the API shows the job);
the outputs are C-STOREd to ``CXR_DESTINATION_AE_*`` (or STOW-RS to the destination DICOMweb
server when no AE is configured). Studies left in the spool by a previous run are queued at
start-up, so nothing received is lost across restarts.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from pathlib import Path

import pydicom

from cxr_service.dimse import SpooledStudy, StorageSCP
from cxr_service.engine import LazyEngine
from cxr_service.jobqueue import JobQueue
from cxr_service.jobs import JobKind
from cxr_service.patients import patient_of
from cxr_service.settings import Settings, load_settings
from cxr_service.worker import EmbeddedWorker

logger = logging.getLogger(__name__)


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Run the DICOM Storage SCP (settings: CXR_* environment variables or .env)")
    parser.add_argument("--port", type=int, default=None, help="port (default CXR_SCP_PORT, 11112)")
    parser.add_argument("--ae-title", default=None, help="AE title (default CXR_SCP_AE_TITLE, CXR)")
    return parser


def spool_dir(settings: Settings) -> Path:
    return settings.data_dir / "spool"


def submit_spooled(queue: JobQueue, study: SpooledStudy) -> None:
    """Queue a closed study of the spool as a job of its patient (only that patient's instances
    are analysed, :class:`cxr_service.worker.JobRunner`)."""
    job, created = queue.submit(
        study_instance_uid=study.study_instance_uid, kind=JobKind.SPOOL, spool=str(study.folder.resolve()), patient_id=study.patient_id
    )
    logger.info("study %s closed: job %s%s", study.study_instance_uid, job.id, "" if created else " (already queued)")


def recover_spool(queue: JobQueue, folder: Path) -> int:
    """Queue every study folder left in the spool by an earlier run (as the patient of its first
    file: a folder an earlier version filled by StudyInstanceUID alone may hold several)."""
    count = 0
    for study_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        first = next((f for f in sorted(study_dir.glob("*.dcm"))), None)
        if first is None:
            continue
        try:
            ds = pydicom.dcmread(first, stop_before_pixels=True, specific_tags=["StudyInstanceUID", "PatientID"])
            uid = str(ds.StudyInstanceUID)
        except Exception as exc:
            logger.warning("spool: cannot read %s (%s); left in place", first.name, type(exc).__name__)
            continue
        submit_spooled(queue, SpooledStudy(study_instance_uid=uid, patient_id=patient_of(ds) or "", folder=study_dir))
        count += 1
    return count


def main(args: argparse.Namespace) -> None:
    overrides: dict[str, object] = {}
    if args.port is not None:
        overrides["scp_port"] = args.port
    if args.ae_title is not None:
        overrides["scp_ae_title"] = args.ae_title
    settings = load_settings(**overrides)
    # Spool jobs run here, on this SCP's own queue: the spool is a local folder.
    queue = JobQueue.for_scp(settings)
    worker = EmbeddedWorker(queue, LazyEngine(settings), settings)
    scp = StorageSCP(
        ae_title=settings.scp_ae_title,
        spool_dir=spool_dir(settings),
        idle_s=settings.scp_idle_s,
        on_study_closed=lambda study: submit_spooled(queue, study),
    )
    recovered = recover_spool(queue, spool_dir(settings))
    if recovered:
        logger.info("queued %d study(ies) left in the spool", recovered)
    worker.start()
    port = scp.start(port=settings.scp_port)
    logger.info("cxr scp ready: AE %s, port %d", settings.scp_ae_title, port)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()
    logger.info("stopping")
    scp.stop()
    worker.stop()
    queue.close()
