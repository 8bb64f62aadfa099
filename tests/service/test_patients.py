"""One study is one patient's (cxr_service.patients): keys, checks, and the writers' refusal to
mix patients, in process and without models.

Two patients under one StudyInstanceUID happen (a modality error, a study sent again after a
patient merge, the same SOP Instance UIDs under another Patient ID). Orthanc keeps them as two
studies; cxr must never write an output that covers both, and the two patients' outputs must not
share a UID.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from cxr_service.failures import PermanentFailure, as_job_failure
from cxr_service.patients import MixedPatients, check_patient_id, single_patient, study_key
from cxr_service.uids import device_uid, patient_scope, series_uid
from cxr_service.writers import write_all
from tests.service.test_writers import AP_UID, MODEL_VERSION, PA_UID, STUDY_UID, full_sources, headers, make_result  # noqa: F401

PATIENT = "CXR0001"  # the Patient ID of tests.service.test_writers.make_cr


def test_study_keys_separate_patients_and_hold_no_patient_data() -> None:
    assert study_key("1.2.3", None) == "1.2.3", "jobs and results of earlier versions keep the bare UID"
    a, b, empty = study_key("1.2.3", "P1"), study_key("1.2.3", "P2"), study_key("1.2.3", "")
    assert len({a, b, empty}) == 3 and all(k.startswith("1.2.3/") for k in (a, b, empty))
    assert "P1" not in a and a == study_key("1.2.3", "P1")


@pytest.mark.parametrize(
    ("value", "fragment"),
    [("x" * 257, "longer than 256"), ("A\\B", "backslash"), ("A\nB", "control"), ("A\x00", "control")],
)
def test_patient_ids_are_checked_without_repeating_them(value: str, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment) as raised:
        check_patient_id(value)
    assert value not in str(raised.value)


def test_patient_ids_keep_their_value_and_lose_their_padding() -> None:
    assert check_patient_id(" P1 ") == "P1" and check_patient_id("") == "" and check_patient_id(None) is None
    assert check_patient_id("Müller\x1b$B") == "Müller\x1b$B", "ESC (ISO 2022) is allowed in LO"
    assert check_patient_id("x" * 70) == "x" * 70, "over LO's 64 characters, but such IDs exist and are copied unchanged"


def test_single_patient_names_the_instances_never_the_ids() -> None:
    assert single_patient([("a", "P1"), ("b", None), ("c", "P1")], study_instance_uid="1.2") == "P1"
    assert single_patient([("a", None)], study_instance_uid="1.2") is None
    with pytest.raises(MixedPatients) as mixed:
        single_patient([("files[0]", "SECRET-A"), ("files[1]", "SECRET-A"), ("files[2]", "SECRET-B")], study_instance_uid="1.2")
    message = str(mixed.value)
    assert "2 patients" in message and "files[2]" in message and "files[0]" in message
    assert "SECRET" not in message
    with pytest.raises(MixedPatients, match="another patient than the one requested"):
        single_patient([("x", "P1"), ("y", "P2")], study_instance_uid="1.2", expected="P1")
    assert single_patient([("x", "P1"), ("y", None)], study_instance_uid="1.2", expected="P1") == "P1"


def test_mixed_patients_is_a_permanent_failure_that_keeps_its_reason() -> None:
    exc = MixedPatients("study 1.2 holds instances of 2 patients")
    assert isinstance(exc, PermanentFailure) and isinstance(exc, ValueError)
    assert as_job_failure(exc) is exc, "the job shows the reason, not 'internal error (ValueError)'"


def test_the_writers_refuse_sources_of_two_patients(headers) -> None:
    mixed = dict(headers)
    other = copy.deepcopy(mixed[AP_UID])
    other.PatientID = "SOMEONE-ELSE"
    mixed[AP_UID] = other
    with pytest.raises(MixedPatients) as raised:
        write_all(make_result(), mixed, {})
    assert "SOMEONE-ELSE" not in str(raised.value) and AP_UID in str(raised.value) and "2 patients" in str(raised.value)


def test_two_patients_under_one_study_uid_share_no_output_uid(headers) -> None:
    """The merge case: the same SOP Instance UIDs under another Patient ID. Every output UID
    (series, instances) depends on the patient; one patient's outputs stay deterministic."""
    displays = {uid: np.zeros((ds.Rows, ds.Columns), dtype=np.float32) for uid, ds in headers.items()}
    moved = {}
    for uid, ds in headers.items():
        copied = copy.deepcopy(ds)
        copied.PatientID = "CXR0002"
        moved[uid] = copied
    first = write_all(make_result(), headers, displays).datasets
    again = write_all(make_result(), headers, displays).datasets
    other = write_all(make_result(), moved, displays).datasets

    def uids(datasets):
        return {(kind, str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)) for kind, items in datasets.items() for ds in items}

    assert uids(first) == uids(again)
    first_uids = {u for _, series, sop in uids(first) for u in (series, sop)}
    other_uids = {u for _, series, sop in uids(other) for u in (series, sop)}
    assert first_uids and not first_uids & other_uids
    assert {str(ds.PatientID) for items in other.values() for ds in items} == {"CXR0002"}
    with patient_scope(PATIENT):
        assert {str(ds.SeriesInstanceUID) for ds in first["sr"]} == {series_uid(study_uid=STUDY_UID, model_version=MODEL_VERSION, kind="sr")}
        scoped_device = device_uid(algorithm_name="cxr", model_version=MODEL_VERSION)
    assert scoped_device == device_uid(algorithm_name="cxr", model_version=MODEL_VERSION), "the algorithm is one device"
    assert series_uid(study_uid=STUDY_UID, model_version=MODEL_VERSION, kind="sr") not in first_uids, "outside the scope: the old UIDs"


# --- the API, in process and without models ----------------------------------------------------

TOKEN = "in-process-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def client(tmp_path):
    from types import SimpleNamespace

    from fastapi.testclient import TestClient

    from cxr_service.api import create_app
    from cxr_service.ingest import IngestLimits
    from cxr_service.jobqueue import JobQueue
    from cxr_service.settings import Settings

    settings = Settings(api_token=TOKEN, data_dir=tmp_path, embedded_worker=False)
    app = create_app(settings)
    app.state.queue = JobQueue.from_settings(settings)
    app.state.engine = SimpleNamespace(limits=IngestLimits())  # the upload is refused before any model runs
    yield TestClient(app)
    app.state.queue.close()


def test_a_job_names_its_patient_and_each_patient_gets_its_own(client) -> None:
    def submit(**body):
        return client.post("/v1/studies", json={"study_instance_uid": "1.2.3", **body}, headers=AUTH)

    a, b, again, unnamed = submit(patient_id="A"), submit(patient_id="B"), submit(patient_id="A"), submit()
    assert [r.status_code for r in (a, b, again, unnamed)] == [202] * 4
    assert a.json()["created"] and b.json()["created"] and not again.json()["created"]
    assert again.json()["job"]["id"] == a.json()["job"]["id"] and a.json()["job"]["patient_id"] == "A"
    assert unnamed.json()["created"] and unnamed.json()["job"]["patient_id"] is None
    bad = submit(patient_id="A\\B")
    assert bad.status_code == 422 and bad.headers["content-type"].startswith("application/problem+json")
    assert "patient_id" in bad.json()["detail"] and "backslash" in bad.json()["detail"]


def test_results_are_served_per_patient(client) -> None:
    store = client.app.state.queue.store
    for patient in ("A", "B"):
        store.put_result(document={"study_instance_uid": "1.2.3", "model_version": "v", "images": [], "patient_id": patient}, job_id=f"job-{patient}")
    served = client.get("/v1/studies/1.2.3/result", params={"patient_id": "B"}, headers=AUTH)
    assert served.status_code == 200 and served.json()["patient_id"] == "B"
    ambiguous = client.get("/v1/studies/1.2.3/result", headers=AUTH)
    assert ambiguous.status_code == 409 and "patient_id" in ambiguous.json()["detail"] and "2 patients" in ambiguous.json()["detail"]
    assert client.get("/v1/studies/1.2.3/result", params={"patient_id": "C"}, headers=AUTH).status_code == 404


def test_an_upload_mixing_two_patients_under_one_study_uid_is_refused_naming_files(client, full_sources) -> None:
    import io

    def file_bytes(ds, patient_id: str) -> bytes:
        ds = copy.deepcopy(ds)
        ds.PatientID = patient_id
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        return buffer.getvalue()

    pa, ap = full_sources[PA_UID], full_sources[AP_UID]
    files = [("files", ("a.dcm", file_bytes(pa, "SECRET-A"), "application/dicom")), ("files", ("b.dcm", file_bytes(ap, "SECRET-B"), "application/dicom"))]
    r = client.post("/v1/analyze", files=files, headers=AUTH)
    assert r.status_code == 422 and r.headers["content-type"].startswith("application/problem+json")
    detail = r.json()["detail"]
    assert detail.startswith("files: ") and "2 patients" in detail and "files[1]" in detail and "files[0]" in detail
    assert "SECRET" not in detail


def test_the_patient_of_a_file_is_read_from_its_header(tmp_path, full_sources) -> None:
    from cxr_service.patients import read_patient_id

    path = tmp_path / "a.dcm"
    full_sources[PA_UID].save_as(path, enforce_file_format=True)
    assert read_patient_id(path) == PATIENT and read_patient_id(data=path.read_bytes()) == PATIENT
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"\x00" * 300 + b"not DICOM at all")
    assert read_patient_id(garbage) is None, "bytes read by force are no instance: patient unknown, not ''"
    assert read_patient_id(tmp_path / "missing.dcm") is None
