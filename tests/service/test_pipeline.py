"""The one path (cxr_service.pipeline) in process, with the shipped demo weights on the CPU.

- Every corpus case's outputs pass dciodvfy with 0 errors, both as the pipeline writes them and
  with every ingested case forced through all four writers.
- A study with one bad and one good image is analysed for the good one, the bad one's reason is
  in the SR, and the job is done at its first attempt.
- A study whose every image is rejected still gets an SR with each reason, and the job's note
  (what the Orthanc plugin shows as cxr-reason) summarises them.
- Errors the same input would raise again are never retried; a re-sent instance with other
  pixels is analysed again; an upload never replaces a job's result.
"""

from __future__ import annotations

import copy
import dataclasses
import shutil
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from cxr_models.records import Box

from cxr_service.dicomweb import InstanceRef
from cxr_service.engine import AnalysisEngine, LazyEngine
from cxr_service.failures import PermanentFailure, TransientFailure
from cxr_service.ingest import IngestedImage
from cxr_service.jobqueue import JobQueue
from cxr_service.jobs import AmbiguousStudy, JobKind, JobState, ResultOrigin
from cxr_service.patients import MixedPatients
from cxr_service.pipeline import (
    Folder,
    InstanceSource,
    Nowhere,
    Pacs,
    Requester,
    StudyInstance,
    StudyRequest,
    ingest_instance,
    run_study,
)
from cxr_service.results import ImageResult, Opacity, StudyResult
from cxr_service.settings import Settings
from cxr_service.worker import JobRunner
from cxr_service.writers import write_all
from tests.corpus import MALFORMED_CASES, REFERENCE_CASE, CorpusCase, build_corpus

SEED = 7
NOT_ANALYSED = ("CXR009", "99CXR")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CorpusCase]:
    return {case.name: case for case in build_corpus(tmp_path_factory.mktemp("corpus"), seed=SEED)}


@pytest.fixture(scope="module")
def engine() -> AnalysisEngine:
    return AnalysisEngine.create(weights_dir=None, device="cpu", min_score=None, max_pixels=64_000_000)


def dciodvfy_errors(path: Path) -> list[str]:
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.fail("dciodvfy (Debian dicom3tools) is required: make system-deps")
    run = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60, check=False)
    return [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]


def instances_of(cases: list[CorpusCase], engine: AnalysisEngine) -> list[StudyInstance]:
    return [ingest_instance(InstanceSource(label=c.path.name, path=c.path), limits=engine.limits) for c in cases]


def by_study(instances: list[StudyInstance]) -> dict[str, list[StudyInstance]]:
    studies: dict[str, list[StudyInstance]] = {}
    for instance in instances:
        if instance.item.study_instance_uid:
            studies.setdefault(instance.item.study_instance_uid, []).append(instance)
    return studies


def walk(ds: pydicom.Dataset) -> Iterator[pydicom.Dataset]:
    for item in ds.get("ContentSequence", []):
        yield item
        yield from walk(item)


def not_analysed_texts(sr: pydicom.Dataset) -> list[str]:
    return [
        str(item.TextValue)
        for item in walk(sr)
        if "ConceptNameCodeSequence" in item
        and (item.ConceptNameCodeSequence[0].CodeValue, item.ConceptNameCodeSequence[0].CodingSchemeDesignator) == NOT_ANALYSED
    ]


def sop_uid(case: CorpusCase) -> str:
    return str(pydicom.dcmread(case.path, stop_before_pixels=True, force=True).SOPInstanceUID)


# --- dciodvfy over the whole corpus ----------------------------------------------------------


def test_every_corpus_case_gives_outputs_without_dciodvfy_errors(corpus, engine, tmp_path: Path) -> None:
    """The pipeline over every study of the corpus (as `cxr analyze` runs it), then every
    ingested case forced through all four writers as if analysed with a box, so GSPS, SEG and
    SC are checked even for images the models refuse."""
    out = tmp_path / "pipeline"
    instances = instances_of(list(corpus.values()), engine)
    for uid, study in by_study(instances).items():
        run_study(StudyRequest(study_instance_uid=uid, requester=Requester.CLI, destination=Folder(out)), study, engine=engine)
    forced = tmp_path / "forced"
    forced.mkdir()
    for instance in instances:
        if isinstance(instance.item, IngestedImage):
            for kind, datasets in write_all(*forced_result(instance.item, engine)).datasets.items():
                for ds in datasets:
                    ds.save_as(forced / f"{instance.item.sop_instance_uid}-{kind}-{ds.SOPInstanceUID}.dcm", enforce_file_format=True)
    files = sorted(out.rglob("*.dcm")) + sorted(forced.glob("*.dcm"))
    analysed = sum(isinstance(i.item, IngestedImage) for i in instances)
    assert len(list(forced.glob("*.dcm"))) == 4 * analysed
    errors = {str(path.relative_to(tmp_path)): e for path in files if (e := dciodvfy_errors(path))}
    assert not errors, errors
    sr_files = sorted(out.rglob("sr.dcm"))
    assert len(sr_files) == len(by_study(instances)), "every study gets an SR"


def forced_result(image: IngestedImage, engine: AnalysisEngine) -> tuple[StudyResult, dict, dict]:
    rows, columns = image.rows, image.columns
    lungs = np.zeros((rows, columns), dtype=bool)
    lungs[rows // 5 : 4 * rows // 5, columns // 8 : 7 * columns // 8] = True
    box = Box(columns / 4, rows / 4, columns / 2, rows / 2)
    opacity = np.zeros_like(lungs)
    opacity[rows // 4 : rows // 2, columns // 4 : columns // 2] = True
    result = StudyResult(
        study_instance_uid=image.study_instance_uid,
        algorithm=engine.algorithm,
        study_label="typical",
        study_probabilities={"negative": 0.1, "typical": 0.7, "indeterminate": 0.1, "atypical": 0.1},
        images=(
            ImageResult(
                sop_instance_uid=image.sop_instance_uid,
                series_instance_uid=image.series_instance_uid,
                sop_class_uid=image.sop_class_uid,
                view="frontal",
                view_probabilities={"frontal": 0.9, "lateral": 0.05, "other": 0.05},
                analysed=True,
                lung_box=Box(columns / 8, rows / 5, 7 * columns / 8, 4 * rows / 5),
                opacities=(Opacity(box, 0.8),),
                opacity_percent=10.0,
                lung_mask=lungs,
                opacity_mask=opacity,
            ),
        ),
    )
    return result, {image.sop_instance_uid: image.dataset}, {image.sop_instance_uid: image.display}


# --- one bad header or image never breaks the others -----------------------------------------


def test_hostile_headers_are_repaired_or_left_out_and_the_good_image_analysed(corpus, engine, tmp_path: Path) -> None:
    names = [REFERENCE_CASE, "window_width_zero", "invalid_header_values", "pixel_spacing_zero", "short_pixel_data"]
    instances = instances_of([corpus[n] for n in names], engine)
    uid = corpus[REFERENCE_CASE].study_instance_uid
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run = run_study(StudyRequest(study_instance_uid=uid, requester=Requester.CLI, destination=Folder(tmp_path)), instances, engine=engine)
    doc = run.document
    images = {i["sop_instance_uid"]: i for i in doc["images"]}
    assert images[sop_uid(corpus[REFERENCE_CASE])]["analysed"]
    assert doc["not_written"] == [], doc["not_written"]
    bad = images[sop_uid(corpus["short_pixel_data"])]
    assert not bad["analysed"] and "short pixel data" in bad["reason"]
    assert "short pixel data" in run.summary
    folder = tmp_path / uid
    sr = pydicom.dcmread(folder / "sr.dcm")
    assert any("short pixel data" in text for text in not_analysed_texts(sr))
    zero = sop_uid(corpus["window_width_zero"])
    assert images[zero]["analysed"]
    assert "SoftcopyVOILUTSequence" not in pydicom.dcmread(_gsps_of(folder, zero)), "a window width of 0 was copied"
    reference_gsps = pydicom.dcmread(_gsps_of(folder, sop_uid(corpus[REFERENCE_CASE])))
    assert "SoftcopyVOILUTSequence" not in reference_gsps  # the reference has no window either
    for path in folder.rglob("*.dcm"):
        ds = pydicom.dcmread(path)
        assert ds.PatientID == pydicom.dcmread(corpus[REFERENCE_CASE].path, stop_before_pixels=True).PatientID
        for item in [ds, *ds.get("SharedFunctionalGroupsSequence", [])]:
            for measures in item.get("PixelMeasuresSequence", []):
                assert all(float(v) > 0 for v in measures.PixelSpacing)
        assert not dciodvfy_errors(path), path


def _gsps_of(folder: Path, source_uid: str) -> Path:
    for path in (folder / "gsps").glob("*.dcm"):
        ds = pydicom.dcmread(path)
        if ds.ReferencedSeriesSequence[0].ReferencedImageSequence[0].ReferencedSOPInstanceUID == source_uid:
            return path
    raise AssertionError(f"no GSPS references {source_uid}")


def test_a_study_whose_every_image_is_rejected_gets_an_sr_with_each_reason(corpus, engine, tmp_path: Path) -> None:
    study_uid = corpus[REFERENCE_CASE].study_instance_uid
    rejected = [corpus[n] for n in MALFORMED_CASES if corpus[n].study_instance_uid == study_uid]
    instances = instances_of(rejected, engine)
    run = run_study(
        StudyRequest(study_instance_uid=study_uid, requester=Requester.CLI, destination=Folder(tmp_path)), instances, engine=engine
    )
    assert run.analysed == 0
    assert run.summary.startswith(f"0 of {len(rejected)} images analysed; not analysed: ")
    sr = pydicom.dcmread(tmp_path / study_uid / "sr.dcm")
    texts = not_analysed_texts(sr)
    assert len(texts) == len(rejected)
    for case in rejected:
        assert any(case.reason_contains in text for text in texts), case.name
        assert case.reason_contains[:60] in run.summary, case.name  # the summary cuts long reasons
    assert sr.PatientID == pydicom.dcmread(rejected[0].path, stop_before_pixels=True, force=True).PatientID
    assert not dciodvfy_errors(tmp_path / study_uid / "sr.dcm")


# --- the worker: retries, idempotency, results kept apart ------------------------------------


class FakePacs:
    """A DICOMweb PACS in memory, with the slice of DicomWebPacs the worker uses."""

    url = "http://pacs.test/dicom-web"

    def __init__(self, datasets: list[pydicom.Dataset]) -> None:
        self.instances = {str(ds.SOPInstanceUID): ds for ds in datasets}
        self.stored: list[pydicom.Dataset] = []
        self.store_error: Exception | None = None
        self.honours_patient_filter = True  # False: a PACS whose QIDO ignores PatientID

    def find_instances(self, study_instance_uid: str, *, patient_id: str | None = None) -> list[InstanceRef]:
        refs = [
            InstanceRef(study_instance_uid, str(ds.SeriesInstanceUID), uid)
            for uid, ds in sorted(self.instances.items())
            if str(ds.StudyInstanceUID) == study_instance_uid
            and (patient_id is None or not self.honours_patient_filter or str(ds.PatientID) == patient_id)
        ]
        if not refs:
            raise PermanentFailure(f"study {study_instance_uid} not found at {self.url}")
        return refs

    def retrieve(self, ref: InstanceRef) -> pydicom.Dataset:
        return copy.deepcopy(self.instances[ref.sop_instance_uid])

    def store(self, datasets: list[pydicom.Dataset]) -> None:
        if self.store_error is not None:
            raise self.store_error
        self.stored.extend(datasets)


@pytest.fixture()
def worker(corpus, engine, tmp_path: Path):
    settings = Settings(environment="development", data_dir=tmp_path / "data", job_retries=2, retry_delay_s=0.01)
    queue = JobQueue.from_settings(settings)
    pacs = FakePacs([pydicom.dcmread(corpus[n].path) for n in (REFERENCE_CASE, "short_pixel_data", "window_width_zero")])
    runner = JobRunner(queue=queue, engine=LazyEngine(settings, engine=engine), settings=settings, source=pacs, destination=pacs)
    yield runner, pacs
    queue.close()


def run_job(runner: JobRunner, study_uid: str, *, force: bool = False):
    job, _ = runner.queue.submit(study_instance_uid=study_uid, kind=JobKind.DICOMWEB, force=force)
    runner(job.id)
    return runner.store.get(job.id)


def test_a_job_with_a_bad_and_a_good_image_is_done_at_once_with_the_reason(worker, corpus) -> None:
    runner, pacs = worker
    uid = corpus[REFERENCE_CASE].study_instance_uid
    job = run_job(runner, uid)
    assert job.state == JobState.DONE and job.attempts == 1, job
    assert job.note.startswith("2 of 3 images analysed; not analysed: short pixel data"), job.note
    srs = [ds for ds in pacs.stored if ds.Modality == "SR"]
    assert len(srs) == 1 and any("short pixel data" in t for t in not_analysed_texts(srs[0]))
    assert sum(ds.Modality == "PR" for ds in pacs.stored) == 2  # one GSPS per analysed image
    stored = runner.store.get_result(uid)
    assert stored.job_id == job.id and stored.document["summary"] == job.note
    assert stored.document["delivered_to"] == f"dicomweb:{pacs.url}" and stored.document["origin"] == "job"


@pytest.mark.parametrize(
    ("error", "state", "attempts", "fragment"),
    [
        (PermanentFailure("STOW-RS: HTTP 400 from the PACS"), JobState.FAILED, 1, "HTTP 400"),
        (ValueError("a writer bug that every attempt would hit"), JobState.FAILED, 1, "not retried"),
        (TransientFailure("STOW-RS: pacs unreachable"), JobState.RETRYING, 1, "unreachable"),
        (ConnectionResetError(104, "Connection reset by peer"), JobState.RETRYING, 1, "Connection reset"),
    ],
)
def test_permanent_errors_are_never_retried(worker, corpus, error, state, attempts, fragment) -> None:
    runner, pacs = worker
    pacs.store_error = error
    job = run_job(runner, corpus[REFERENCE_CASE].study_instance_uid)
    assert job.state == state and job.attempts == attempts, job
    assert fragment in job.error


def test_a_resent_instance_with_other_pixels_is_analysed_again(worker, corpus, monkeypatch) -> None:
    import cxr_service.worker as worker_module

    runner, pacs = worker
    uid = corpus[REFERENCE_CASE].study_instance_uid
    first = run_job(runner, uid)
    decoded: list[str] = []
    real = worker_module.ingest_instance
    monkeypatch.setattr(worker_module, "ingest_instance", lambda source, **kw: decoded.append(source.label) or real(source, **kw))
    again = run_job(runner, uid)
    assert again.state == JobState.DONE and "already analysed" in again.note
    assert decoded == [], "the skip rule decides from the digests, before anything is decoded"
    assert runner.store.get_result(uid).analyses == 1

    # The PACS now holds other pixels under the same SOP Instance UID (Orthanc overwrites).
    reference = pacs.instances[sop_uid(corpus[REFERENCE_CASE])]
    pixels = reference.pixel_array
    reference.PixelData = np.ascontiguousarray(pixels[::-1]).astype(pixels.dtype).tobytes()
    before = runner.store.get_result(uid).document["source_digests"]
    changed = run_job(runner, uid)
    assert changed.state == JobState.DONE and "already analysed" not in (changed.note or ""), changed
    stored = runner.store.get_result(uid)
    assert stored.job_id == changed.id and stored.analyses == 2
    after = stored.document["source_digests"]
    assert set(after) == set(before) and after[sop_uid(corpus[REFERENCE_CASE])] != before[sop_uid(corpus[REFERENCE_CASE])]
    assert [k for k in after if after[k] != before[k]] == [sop_uid(corpus[REFERENCE_CASE])]
    assert first.id != changed.id


def test_an_upload_never_replaces_a_job_result(worker, corpus, engine) -> None:
    runner, pacs = worker
    uid = corpus[REFERENCE_CASE].study_instance_uid
    job = run_job(runner, uid)
    instances = instances_of([corpus[REFERENCE_CASE]], engine)
    upload = run_study(
        StudyRequest(study_instance_uid=uid, requester=Requester.UPLOAD, destination=Nowhere()), instances, engine=engine, store=runner.store
    )
    assert upload.document["origin"] == "upload" and upload.document["job_id"] is None
    assert upload.document["delivered_to"] is None
    kept = runner.store.get_result(uid)
    assert kept.job_id == job.id and kept.origin == ResultOrigin.JOB and kept.analyses == 1
    assert runner.store.get_result(uid, origin=ResultOrigin.UPLOAD).document["images"] == upload.document["images"]
    assert len(kept.document["images"]) == 3 and len(upload.document["images"]) == 1
    # The job's result still decides the skip: the PACS content is unchanged.
    assert "already analysed" in run_job(runner, uid).note


def referenced_sop_uids(ds: pydicom.Dataset) -> set[str]:
    """Every ReferencedSOPInstanceUID anywhere in a dataset."""
    found = set()
    for element in ds.iterall():
        if element.keyword == "ReferencedSOPInstanceUID":
            found.add(str(element.value))
    return found


def test_two_patients_under_one_study_uid_are_two_jobs_and_never_mixed(corpus, engine, tmp_path: Path) -> None:
    """Orthanc keeps the same StudyInstanceUID under two Patient IDs as two studies: each job
    names its patient and sees only that patient's instances; a job naming none refuses the
    mixture at once; no output of one patient references the other's image or shares a UID."""
    mine = pydicom.dcmread(corpus[REFERENCE_CASE].path)
    theirs = copy.deepcopy(mine)
    theirs.PatientID, theirs.PatientName = "OTHER-PATIENT-7", "Other^Patient"
    theirs.SOPInstanceUID = theirs.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["theirs"])
    uid, me, other = str(mine.StudyInstanceUID), str(mine.PatientID), "OTHER-PATIENT-7"
    settings = Settings(environment="development", data_dir=tmp_path / "data", job_retries=2, retry_delay_s=0.01)
    queue = JobQueue.from_settings(settings)
    pacs = FakePacs([mine, theirs])
    runner = JobRunner(queue=queue, engine=LazyEngine(settings, engine=engine), settings=settings, source=pacs, destination=pacs)

    def run(patient_id: str | None, *, force: bool = False):
        job, _ = queue.submit(study_instance_uid=uid, kind=JobKind.DICOMWEB, patient_id=patient_id, force=force)
        runner(job.id)
        return runner.store.get(job.id)

    try:
        unnamed = run(None)
        assert unnamed.state == JobState.FAILED and unnamed.attempts == 1, unnamed
        assert "holds instances of 2 patients" in unnamed.error and "patient_id" in unnamed.error
        assert me not in unnamed.error and other not in unnamed.error
        assert pacs.stored == [] and runner.store.get_result(uid) is None

        first = run(me)
        assert first.state == JobState.DONE and first.patient_id == me, first
        mine_out, pacs.stored = list(pacs.stored), []
        second = run(other)
        assert second.state == JobState.DONE, second
        theirs_out, pacs.stored = list(pacs.stored), []
        for outputs, patient, image, foreign in ((mine_out, me, mine, theirs), (theirs_out, other, theirs, mine)):
            assert {ds.Modality for ds in outputs} == {"SR", "PR", "SEG", "OT"}
            assert {str(ds.PatientID) for ds in outputs} == {patient}
            referenced = set().union(*(referenced_sop_uids(ds) for ds in outputs))
            assert str(image.SOPInstanceUID) in referenced and str(foreign.SOPInstanceUID) not in referenced
        assert not {str(ds.SOPInstanceUID) for ds in mine_out} & {str(ds.SOPInstanceUID) for ds in theirs_out}
        assert not {str(ds.SeriesInstanceUID) for ds in mine_out} & {str(ds.SeriesInstanceUID) for ds in theirs_out}

        with pytest.raises(AmbiguousStudy):
            runner.store.get_result(uid)
        assert runner.store.get_result(uid, patient_id=me).job_id == first.id
        assert runner.store.get_result(uid, patient_id=other).document["patient_id"] == other
        assert "already analysed" in run(me).note, "the skip rule compares the patient's own last result"

        # A PACS whose QIDO ignores the Patient ID: the other patient's instance is fetched,
        # recognised by its header and left out (listed in not_attributed, never in an output).
        pacs.honours_patient_filter = False
        forced = run(me, force=True)
        assert forced.state == JobState.DONE, forced
        assert {str(ds.PatientID) for ds in pacs.stored} == {me}
        assert str(theirs.SOPInstanceUID) not in set().union(*(referenced_sop_uids(ds) for ds in pacs.stored))
        document = runner.store.get_result(uid, patient_id=me).document
        assert [e["sop_instance_uid"] for e in document["not_attributed"]] == [str(theirs.SOPInstanceUID)]
        assert "another patient" in document["not_attributed"][0]["reason"]
        assert str(theirs.SOPInstanceUID) not in document["source_digests"]
    finally:
        queue.close()

    # The one path refuses the mixture itself (the upload and CLI doors, and any door to come).
    both = [ingest_instance(InstanceSource(label=f"files[{i}]", dataset=ds), limits=engine.limits) for i, ds in enumerate((mine, theirs))]
    request = StudyRequest(study_instance_uid=uid, requester=Requester.CLI, destination=Nowhere())
    with pytest.raises(MixedPatients, match="2 patients"):
        run_study(request, both, engine=engine)
    with pytest.raises(MixedPatients, match="another patient than the one requested"):
        run_study(dataclasses.replace(request, patient_id=other), both[:1], engine=engine)


def test_requests_are_typed() -> None:
    with pytest.raises(ValueError, match="job_id"):
        StudyRequest(study_instance_uid="1.2.3", requester=Requester.JOB, destination=Nowhere())
    with pytest.raises(ValueError, match="job_id"):
        StudyRequest(study_instance_uid="1.2.3", requester=Requester.UPLOAD, destination=Nowhere(), job_id="abc")
    with pytest.raises(ValueError, match="label"):
        Pacs(label="", send=lambda datasets: None)
    with pytest.raises(ValueError, match="exactly one"):
        InstanceSource(label="x", data=b"", dataset=pydicom.Dataset())
