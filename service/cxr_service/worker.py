"""Running jobs: fetch a study, analyse it, deliver the outputs, record the result.

``cxr worker`` runs a Huey consumer with :class:`JobRunner`; ``cxr serve`` and ``cxr scp`` run
the same runner in an embedded consumer. Each job:

1. is claimed (a job can run in one worker at a time; a finished job never runs again) and
   holds a lease renewed by a heartbeat, so a killed worker's job is requeued (``JobQueue.reap``);
2. gathers its instances (DICOMweb QIDO + WADO, or the SCP's spool folder): those of the job's
   patient only (QIDO asks for its Patient ID, and each retrieved instance's is checked; another
   patient's instance is left out and listed in ``not_attributed``); a job without a patient
   whose instances belong to several fails at once (:mod:`cxr_service.patients`);
3. is skipped when the study was already analysed from the same instances, byte for byte
   (SHA-256 of each, compared before anything is decoded), with the same model version and for
   the same destination, unless forced: an instance re-sent under its SOP Instance UID with
   other pixels is analysed again;
4. otherwise runs :func:`cxr_service.pipeline.run_study` (the path every door takes): analysis,
   outputs sent by STOW-RS or C-STORE to the destination AE, result.json kept as the job's, and
   the study's triage put into the worklist (a webhook notice queued for a high priority, sent
   by the process's :class:`~cxr_service.webhook.WebhookNotifier`, never by the job);
5. on a transient failure (PACS down...) is retried with exponential backoff, up to
   ``job_retries`` times; on a permanent one (a 4xx, an unknown study, an error the same input
   would raise again) it fails at once with its reason.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cxr_service.dicomweb import DicomWebAuth, DicomWebPacs, InstanceRef
from cxr_service.dimse import RemoteAE, send_datasets
from cxr_service.engine import LazyEngine
from cxr_service.failures import JobFailure, PermanentFailure, TransientFailure, as_job_failure
from cxr_service.ingest import IngestLimits, Rejected, iter_dicom_paths
from cxr_service.jobqueue import JobQueue
from cxr_service.jobs import Job, JobKind, JobState, ResultOrigin
from cxr_service.patients import MixedPatients, patient_of, read_patient_id, single_patient
from cxr_service.pipeline import (
    InstanceSource,
    Nowhere,
    Pacs,
    Requester,
    StudyInstance,
    StudyRequest,
    fetch_failed,
    ingest_instance,
    run_study,
)
from cxr_service.settings import Settings, load_settings
from cxr_service.webhook import WebhookNotifier
from cxr_service.worklist import make_triage_store, record_job_triage

logger = logging.getLogger(__name__)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{threading.get_ident()}"


def _secret(value: Any) -> str | None:
    return value.get_secret_value() if value is not None else None


def source_pacs(settings: Settings) -> DicomWebPacs | None:
    if not settings.source_dicomweb_url:
        return None
    auth = DicomWebAuth(
        username=settings.source_username, password=_secret(settings.source_password), token=_secret(settings.source_token)
    )
    return DicomWebPacs(settings.source_dicomweb_url, auth=auth, timeout_s=settings.dicomweb_timeout_s)


def destination_pacs(settings: Settings, *, source: DicomWebPacs | None) -> DicomWebPacs | None:
    """The STOW-RS destination: its own server when configured, else the source itself."""
    url = settings.destination_dicomweb_url
    if url is None:
        return source
    auth = DicomWebAuth(
        username=settings.destination_username,
        password=_secret(settings.destination_password),
        token=_secret(settings.destination_token),
    )
    return DicomWebPacs(url, auth=auth, timeout_s=settings.dicomweb_timeout_s)


def destination_ae(settings: Settings) -> RemoteAE | None:
    if settings.destination_ae_title is None:
        return None
    assert settings.destination_ae_host is not None and settings.destination_ae_port is not None
    return RemoteAE(settings.destination_ae_title, settings.destination_ae_host, settings.destination_ae_port)


class JobRunner:
    """Runs one job id at a time per calling thread; see the module docstring."""

    def __init__(
        self,
        *,
        queue: JobQueue,
        engine: LazyEngine,
        settings: Settings,
        source: DicomWebPacs | None = None,
        destination: DicomWebPacs | None = None,
    ) -> None:
        """``source`` and ``destination`` default to the PACS the settings name."""
        self.queue = queue
        self.store = queue.store
        self.engine = engine
        self.settings = settings
        self.source = source or source_pacs(settings)
        self.destination = destination or destination_pacs(settings, source=self.source)
        self.destination_ae = destination_ae(settings)
        self.triage = make_triage_store(settings)

    def __call__(self, job_id: str) -> None:
        me = worker_id()
        job = self.store.claim(job_id, worker=me, lease_s=self.settings.lease_s)
        if job is None:
            logger.debug("job %s is not claimable (finished, or running elsewhere)", job_id)
            return
        logger.info("job %s: study %s, attempt %d", job.id, job.study_instance_uid, job.attempts)
        start = time.perf_counter()
        with self._heartbeat(job, me):
            try:
                note, timings, version = self._process(job)
            except JobFailure as exc:
                self._failed(job, me, exc)
                return
            except Exception as exc:  # noqa: BLE001 - classified: deterministic errors fail at once, others are retried
                logger.exception("job %s: unexpected error", job.id)
                self._failed(job, me, as_job_failure(exc))
                return
        timings["total"] = (time.perf_counter() - start) * 1000.0
        self.store.finish(job.id, worker=me, state=JobState.DONE, note=note, model_version=version, timings_ms=timings)
        self.store.observe(timings)
        logger.info("job %s done in %.0f ms%s", job.id, timings["total"], f" ({note})" if note else "")

    def _failed(self, job: Job, me: str, exc: JobFailure) -> None:
        reason = str(exc)
        if isinstance(exc, TransientFailure) and job.attempts <= self.settings.job_retries:
            retrying = self.store.finish(job.id, worker=me, state=JobState.RETRYING, error=reason)
            if retrying is not None:
                delay = self.queue.retry_later(retrying)
                logger.warning("job %s: %s; retry %d in %.1f s", job.id, reason, job.attempts, delay)
            return
        if isinstance(exc, TransientFailure):
            reason = f"gave up after {job.attempts} attempts: {reason}"
        self.store.finish(job.id, worker=me, state=JobState.FAILED, error=reason)
        logger.error("job %s failed: %s", job.id, reason)

    @contextmanager
    def _heartbeat(self, job: Job, me: str) -> Iterator[None]:
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.settings.lease_s / 3):
                try:
                    self.store.heartbeat(job.id, worker=me, lease_s=self.settings.lease_s)
                except Exception:
                    logger.exception("job %s: heartbeat failed", job.id)

        thread = threading.Thread(target=beat, name=f"heartbeat-{job.id[:8]}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()

    # --- one job ------------------------------------------------------------------------
    def _process(self, job: Job) -> tuple[str | None, dict[str, float], str]:
        engine = self.engine.get()
        version = engine.model_version
        start = time.perf_counter()
        listed = self._list(job)
        fetched = self._fetch(job, listed)
        fetched, others, patient = self._one_patient(job, fetched)
        fetch_ms = (time.perf_counter() - start) * 1000.0
        destination = self._destination(job)
        previous = self.store.get_result(job.study_instance_uid, origin=ResultOrigin.JOB, patient_id=patient)
        digests = {key: item.sha256 for key, item in fetched.items() if isinstance(item, InstanceSource) and item.sha256}
        if (
            not job.force
            and previous is not None
            and previous.model_version == version
            and previous.document.get("delivered_to") == destination.label
            and previous.document.get("source_digests") == digests
        ):
            note = f"already analysed from the same instances with model version {version} (job {previous.job_id}); not redone"
            self._cleanup(job)
            return note, {"fetch": fetch_ms}, version
        instances = self._ingest(job, fetched, engine.limits)
        request = StudyRequest(
            study_instance_uid=job.study_instance_uid,
            requester=Requester.JOB,
            destination=destination,
            job_id=job.id,
            patient_id=job.patient_id,
        )
        run = run_study(
            request, instances, engine=engine, store=self.store, timings_ms={"fetch": fetch_ms}, digests=digests, not_attributed=others
        )
        record_job_triage(self.triage, self.settings, job, run.document)
        self._cleanup(job)
        return run.summary, {k: float(v) for k, v in run.document["timings_ms"].items()}, version

    def _list(self, job: Job) -> dict[str, InstanceRef | Path]:
        """SOP Instance UID → where to get it: a DICOMweb reference or a spooled file."""
        if job.kind == JobKind.DICOMWEB:
            if self.source is None:
                raise PermanentFailure("no DICOMweb source configured (CXR_SOURCE_DICOMWEB_URL)")
            refs = self.source.find_instances(job.study_instance_uid, patient_id=job.patient_id)
            if not refs:
                raise PermanentFailure(f"study {job.study_instance_uid} has no CR or DX instance at the source")
            return {ref.sop_instance_uid: ref for ref in refs}
        if job.kind == JobKind.SPOOL:
            folder = Path(job.spool or "")
            if not job.spool or not folder.is_dir():
                raise PermanentFailure("the spool folder of this job is gone")
            # The SCP names each file after its SOP Instance UID (or a hash of an invalid one).
            return {path.stem: path for path in iter_dicom_paths([folder])}
        raise PermanentFailure(f"unknown job kind {job.kind!r}")

    def _fetch(self, job: Job, listed: dict[str, InstanceRef | Path]) -> dict[str, InstanceSource | StudyInstance]:
        """Listed key → the instance's content, or (it could not be fetched) its rejection."""
        fetched: dict[str, InstanceSource | StudyInstance] = {}
        for sop_uid, where in listed.items():
            if isinstance(where, Path):
                fetched[sop_uid] = InstanceSource(label=where.name, path=where)
                continue
            assert self.source is not None
            try:
                ds = self.source.retrieve(where)
            except JobFailure:
                raise
            except Exception as exc:  # noqa: BLE001 - an unreadable instance is reported, the others analysed
                logger.warning("job %s: instance %s unreadable: %s", job.id, sop_uid, type(exc).__name__)
                fetched[sop_uid] = fetch_failed(
                    Rejected(
                        sop_instance_uid=sop_uid,
                        study_instance_uid=where.study_instance_uid,
                        series_instance_uid=where.series_instance_uid,
                        source=sop_uid,
                        reason=f"could not be retrieved or parsed ({type(exc).__name__})",
                    )
                )
                continue
            fetched[sop_uid] = InstanceSource(label=sop_uid, dataset=ds)
        return fetched

    def _one_patient(
        self, job: Job, fetched: dict[str, InstanceSource | StudyInstance]
    ) -> tuple[dict[str, InstanceSource | StudyInstance], list[Rejected], str | None]:
        """The fetched instances of the job's patient, the others (left out, with their reason),
        and the patient (None: no header could be read). A job without a patient takes the one
        patient of its instances; several fail it (MixedPatients, permanent)."""
        patients: dict[str, str | None] = {}
        for key, item in fetched.items():
            if isinstance(item, InstanceSource):
                patients[key] = patient_of(item.dataset) if item.dataset is not None else read_patient_id(item.path, item.data)
        if job.patient_id is None:
            try:
                patient = single_patient(patients.items(), study_instance_uid=job.study_instance_uid)
            except MixedPatients as exc:
                raise MixedPatients(f"{exc}; submit each patient's study on its own (patient_id)") from exc
            return fetched, [], patient
        kept: dict[str, InstanceSource | StudyInstance] = {}
        others: list[Rejected] = []
        for key, item in fetched.items():
            if patients.get(key) in (None, job.patient_id):
                kept[key] = item
                continue
            logger.warning("job %s: instance %s belongs to another patient: left out", job.id, key)
            others.append(
                Rejected(
                    sop_instance_uid=key,
                    study_instance_uid=job.study_instance_uid,
                    source=key,
                    reason="another patient's instance (its PatientID is not the job's): left out of this study",
                )
            )
        if others and not kept:
            raise PermanentFailure(f"study {job.study_instance_uid} has no instance of the requested patient at the source")
        return kept, others, job.patient_id

    def _ingest(
        self, job: Job, fetched: dict[str, InstanceSource | StudyInstance], limits: IngestLimits
    ) -> list[StudyInstance]:
        instances: list[StudyInstance] = []
        for item in fetched.values():
            if not isinstance(item, InstanceSource):
                instances.append(item)
                continue
            instance = ingest_instance(item, limits=limits)
            # A spool folder holds one study; a file of another study in it is no instance of this job.
            if item.path is not None and instance.item.study_instance_uid not in (None, job.study_instance_uid):
                continue
            instances.append(instance)
        return instances

    def _destination(self, job: Job) -> Pacs | Nowhere:
        """Where this job's outputs go; its label (no credentials) is the result's delivered_to,
        which the skip rule compares, so a study analysed by an upload, or stored elsewhere, is
        still stored here."""
        if job.kind == JobKind.SPOOL and self.destination_ae is not None:
            ae = self.destination_ae
            return Pacs(
                label=f"dimse:{ae.ae_title}@{ae.host}:{ae.port}",
                send=lambda datasets: send_datasets(datasets, destination=ae, calling_ae_title=self.settings.scp_ae_title),
            )
        if self.destination is not None:
            return Pacs(label=f"dicomweb:{self.destination.url}", send=self.destination.store)
        logger.info("job %s: no destination configured; result.json only", job.id)
        return Nowhere()

    def _cleanup(self, job: Job) -> None:
        if job.kind == JobKind.SPOOL and job.spool:
            shutil.rmtree(job.spool, ignore_errors=True)


class Reaper:
    """Every ``interval_s``: requeue jobs whose worker died and jobs whose message is gone."""

    def __init__(self, queue: JobQueue, *, interval_s: float) -> None:
        self.queue = queue
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cxr-reaper", daemon=True)

    def _loop(self) -> None:
        while True:
            try:
                self.queue.reap()
            except Exception:
                logger.exception("reaper: could not check the queue")
            if self._stop.wait(self.interval_s):
                return

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


class EmbeddedWorker:
    """A consumer plus reaper inside another server's process (``cxr serve``, ``cxr scp``)."""

    def __init__(self, queue: JobQueue, engine: LazyEngine, settings: Settings) -> None:
        runner = JobRunner(queue=queue, engine=engine, settings=settings)
        queue.set_runner(runner)
        self.engine = engine
        self.consumer = queue.consumer(embedded=True)
        self.reaper = Reaper(queue, interval_s=max(1.0, settings.lease_s / 2))
        self.notifier = WebhookNotifier.from_settings(settings, runner.triage)

    def start(self) -> None:
        self.consumer.start()
        self.reaper.start()
        if self.notifier is not None:
            self.notifier.start()

    def stop(self) -> None:
        if self.notifier is not None:
            self.notifier.stop()
        self.reaper.stop()
        self.consumer.stop(graceful=True)
        self.engine.close()


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Run analysis jobs from the queue (settings: CXR_* / .env)")
    parser.add_argument("--threads", type=int, default=None, help="jobs run at once (default CXR_WORKER_THREADS)")
    return parser


def main(args: argparse.Namespace) -> None:
    overrides = {"worker_threads": args.threads} if args.threads else {}
    settings = load_settings(**overrides)
    queue = JobQueue.from_settings(settings)
    runner = JobRunner(queue=queue, engine=LazyEngine(settings), settings=settings)
    queue.set_runner(runner)
    reaper = Reaper(queue, interval_s=max(1.0, settings.lease_s / 2))
    reaper.start()
    notifier = WebhookNotifier.from_settings(settings, runner.triage)
    if notifier is not None:
        notifier.start()
    consumer = queue.consumer(embedded=False)
    logger.info("worker on the %s queue %r, %d thread(s)", settings.queue_backend, settings.queue_name, settings.worker_threads)
    # Huey's consumer handles the signals (SIGINT: graceful, SIGTERM: at once). A job cut short
    # keeps its lease and is requeued by another worker's reaper, or this one's after a restart.
    try:
        consumer.run()
    finally:
        if notifier is not None:
            notifier.stop()
        reaper.stop()
        runner.engine.close()
        queue.close()
