"""End to end inside the PACS, with real processes: a study C-STOREd into Orthanc (with the cxr
plugin) comes back as SR, GSPS, SEG and SC, found by QIDO-RS, with the AI status in Orthanc's
metadata; nothing is lost while the service is down; re-running replaces the outputs; two
patients under one StudyInstanceUID are two studies analysed apart; an instance overwritten with
other pixels makes the plugin submit the study again."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.service.procs import (
    ONE_OF_EACH,
    c_store,
    free_port,
    orthanc_studies,
    relabelled,
    start_orthanc,
    start_service,
    wait_until,
)

pytestmark = pytest.mark.slow

STABLE_AGE = 2


@pytest.fixture(scope="module")
def pacs(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("pacs")
    service_port = free_port()
    orthanc = start_orthanc(root / "orthanc", plugin_service_url=f"http://127.0.0.1:{service_port}", stable_age=STABLE_AGE)
    service = start_service(root / "service", port=service_port, **orthanc.source_settings(lease_s=10))
    yield orthanc, service
    service.stop()
    orthanc.stop()


def wait_status(orthanc, study_uid: str, status: str, *, timeout: float = 120) -> dict[str, str]:
    def check():
        orthanc_id = orthanc.study_id(study_uid)
        meta = orthanc.metadata(orthanc_id) if orthanc_id else {}
        return meta if meta.get("cxr-status") == status else None

    return wait_until(check, timeout=timeout, interval=0.25, what=f"study {study_uid} status {status}")


def test_c_store_into_orthanc_comes_back_analysed(pacs, phantom_studies) -> None:
    orthanc, service = pacs
    uid, paths = next((u, p) for u, p in phantom_studies.items() if len(p) >= 2)
    assert c_store(paths, port=orthanc.dicom_port) == [0] * len(paths)
    meta = wait_status(orthanc, uid, "done", timeout=STABLE_AGE + 60)
    assert meta["cxr-job"]
    with orthanc.client() as c:
        sr = c.get(f"/dicom-web/studies/{uid}/series", params={"Modality": "SR"})
    assert sr.status_code == 200 and len(sr.json()) == 1
    assert orthanc.output_series(uid) == ONE_OF_EACH
    # Our own outputs made STABLE_STUDY fire again: no second job.
    with service.client() as c:
        jobs = c.get(f"/v1/studies/{uid}/result").json()
        worklist = c.get("/v1/worklist", params={"limit": 500}).json()["items"]
    assert jobs["job_id"] == meta["cxr-job"]
    assert "cxr: study" in orthanc.log(), "the plugin logs into Orthanc's log"
    # The triage priority reaches Orthanc's metadata (UserMetadata declares cxr-priority) and the worklist.
    priority = jobs["triage"]["priority"]
    orthanc_id = orthanc.study_id(uid)
    wait_until(lambda: orthanc.metadata(orthanc_id).get("cxr-priority") == priority, timeout=10, what="cxr-priority")
    assert [(i["priority"], i["job_id"]) for i in worklist if i["study_instance_uid"] == uid] == [(priority, meta["cxr-job"])]


def test_study_sent_while_the_service_is_down_is_analysed_when_it_returns(pacs, phantom_studies) -> None:
    orthanc, service = pacs
    uid, paths = list(phantom_studies.items())[-1]
    service.stop()
    try:
        assert c_store(paths, port=orthanc.dicom_port) == [0] * len(paths)
        meta = wait_status(orthanc, uid, "queued", timeout=STABLE_AGE + 30)
        assert "cxr-job" not in meta or not meta["cxr-job"]
        wait_until(lambda: "service unavailable" in orthanc.log(), timeout=30, what="the plugin's retry")
    finally:
        service.restart()
    wait_status(orthanc, uid, "done", timeout=120)
    assert orthanc.output_series(uid) == ONE_OF_EACH


def test_rest_route_reruns_and_replaces_the_outputs(pacs, phantom_studies) -> None:
    orthanc, service = pacs
    uid, paths = next((u, p) for u, p in phantom_studies.items() if len(p) >= 2)
    before = wait_status(orthanc, uid, "done", timeout=STABLE_AGE + 60)
    counts = orthanc.outputs(uid)
    orthanc_id = orthanc.study_id(uid)
    with orthanc.client() as c:
        r = c.post(f"/cxr/studies/{orthanc_id}/analyze")
        assert r.status_code == 200 and r.json()["status"] == "queued"
        assert c.post("/cxr/studies/ffffffff-ffffffff-ffffffff-ffffffff-ffffffff/analyze").status_code == 404
    after = wait_until(
        lambda: (m := orthanc.metadata(orthanc_id)).get("cxr-status") == "done" and m.get("cxr-job") != before["cxr-job"] and m,
        timeout=120,
        what="the re-run",
    )
    assert after["cxr-job"] != before["cxr-job"]
    assert orthanc.outputs(uid) == counts, "re-analysis must replace the outputs, not add to them"
    with service.client() as c:
        job = c.get(f"/v1/jobs/{after['cxr-job']}").json()
    assert job["force"] is True and "already analysed" not in (job["note"] or "")  # the note only lists images not analysed


def test_queued_study_survives_an_orthanc_restart(pacs, large_study) -> None:
    """Orthanc restarts while a study waits for the (stopped) service: at start-up the plugin
    finds it still `queued` in the metadata and submits it again."""
    orthanc, service = pacs
    uid, paths = large_study
    service.stop()
    try:
        assert c_store(paths, port=orthanc.dicom_port) == [0] * len(paths)
        wait_status(orthanc, uid, "queued", timeout=STABLE_AGE + 30)
        orthanc.restart()
        wait_until(lambda: "still queued from before: resubmitted" in orthanc.log(), timeout=30, what="the resubmission")
    finally:
        service.restart()
    wait_status(orthanc, uid, "done", timeout=180)
    assert orthanc.output_series(uid) == ONE_OF_EACH


def test_two_patients_under_one_study_uid_each_get_their_own_results(pacs, phantom_studies) -> None:
    """Orthanc's study is Patient ID + StudyInstanceUID. Before, patient 1's SR referenced
    patient 2's image and patient 2 got none: now each Orthanc study is submitted with its
    Patient ID and gets its own outputs, referencing its own images only."""
    from pydicom.uid import generate_uid

    orthanc, service = pacs
    _, paths = next((u, p) for u, p in phantom_studies.items() if len(p) >= 2)
    uid = generate_uid(entropy_srcs=["pacs-two-patients"])
    me, other = "CXR-E2E-PATIENT-1", "CXR-E2E-PATIENT-2"
    with orthanc.client() as c:
        for data in relabelled(paths, study_uid=uid, patient_id=me, salt="1") + relabelled(paths, study_uid=uid, patient_id=other, salt="2"):
            c.post("/instances", content=data).raise_for_status()

    def both_done():
        studies = orthanc_studies(orthanc, uid)
        metas = {p: orthanc.metadata(s["id"]) for p, s in studies.items()}
        return len(metas) == 2 and all(m.get("cxr-status") == "done" for m in metas.values()) and (studies, metas)

    studies, metas = wait_until(both_done, timeout=STABLE_AGE + 120, interval=0.5, what="both patients' studies done")
    assert metas[me]["cxr-job"] != metas[other]["cxr-job"]
    for patient, study in studies.items():
        assert sorted({ds.Modality for ds in study["outputs"]}) == ["OT", "PR", "SEG", "SR"], patient
        assert sum(ds.Modality == "SR" for ds in study["outputs"]) == 1
        assert {str(ds.PatientID) for ds in study["outputs"]} == {patient}
        own = study["images"] | {str(ds.SOPInstanceUID) for ds in study["outputs"]}
        referenced = {str(e.value) for ds in study["outputs"] for e in ds.iterall() if e.keyword == "ReferencedSOPInstanceUID"}
        assert referenced & study["images"] and referenced <= own, f"{patient}'s outputs reference another patient's images"
        with service.client() as c:
            job = c.get(f"/v1/jobs/{metas[patient]['cxr-job']}").json()
        assert job["patient_id"] == patient and job["state"] == "done"
    assert len(studies[me]["images"]) == len(studies[other]["images"]) == len(paths)
    assert not studies[me]["images"] & studies[other]["images"]


def test_an_instance_overwritten_with_other_pixels_is_analysed_again(pacs, phantom_studies) -> None:
    """OverwriteInstances is on: a re-sent SOP Instance UID replaces the stored file. The same
    bytes again change nothing (no new job); other pixels change the study's fingerprint
    (cxr-instances) and the plugin submits it, and the service analyses it again."""
    import io
    import time

    import numpy as np
    import pydicom
    from pydicom.uid import generate_uid

    orthanc, service = pacs
    _, paths = next((u, p) for u, p in phantom_studies.items() if len(p) >= 2)
    uid = generate_uid(entropy_srcs=["pacs-overwrite"])
    files = relabelled(paths, study_uid=uid, patient_id="CXR-E2E-OVERWRITE", salt="o")
    with orthanc.client() as c:
        for data in files:
            c.post("/instances", content=data).raise_for_status()
    first = wait_status(orthanc, uid, "done", timeout=STABLE_AGE + 120)
    orthanc_id = orthanc.study_id(uid)
    counts = orthanc.outputs(uid)

    with orthanc.client() as c:
        c.post("/instances", content=files[0]).raise_for_status()  # the same bytes again
    time.sleep(STABLE_AGE + 4)
    same = orthanc.metadata(orthanc_id)
    assert same["cxr-job"] == first["cxr-job"] and same["cxr-instances"] == first["cxr-instances"], "identical file: nothing to do"

    ds = pydicom.dcmread(io.BytesIO(files[0]))
    ds.PixelData = np.ascontiguousarray(ds.pixel_array[:, ::-1]).astype(ds.pixel_array.dtype).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    with orthanc.client() as c:
        c.post("/instances", content=buffer.getvalue()).raise_for_status()
    after = wait_until(
        lambda: (m := orthanc.metadata(orthanc_id)).get("cxr-status") == "done" and m.get("cxr-job") != first["cxr-job"] and m,
        timeout=STABLE_AGE + 120,
        interval=0.5,
        what="the overwritten study analysed again",
    )
    assert after["cxr-instances"] != first["cxr-instances"]
    with service.client() as c:
        job = c.get(f"/v1/jobs/{after['cxr-job']}").json()
        result = c.get(f"/v1/studies/{uid}/result").json()
    assert job["force"] is False and "already analysed" not in (job["note"] or ""), job
    assert result["job_id"] == job["id"]
    assert orthanc.outputs(uid) == counts, "the new outputs replace the earlier ones"
