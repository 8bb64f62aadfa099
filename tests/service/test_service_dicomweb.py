"""The embedded mode against a real Orthanc: DICOMweb fetch, analysis, STOW-RS, QIDO-RS.

Real processes: Orthanc (Debian packages) and `cxr serve` / `cxr worker` on the SQLite queue.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from cxr_models.weights import load_manifest
from tests.service.procs import (
    OUTPUT_MODALITIES,
    Orthanc,
    free_port,
    orthanc_studies,
    relabelled,
    start_service,
    start_worker,
)

pytestmark = pytest.mark.slow


def source_settings(orthanc: Orthanc) -> dict[str, object]:
    return orthanc.source_settings(job_retries=1, retry_delay_s=0.5, lease_s=5)


def series_by_modality(orthanc: Orthanc, study_uid: str) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for item in orthanc.series_of_study(study_uid):
        out.setdefault(item["00080060"]["Value"][0], []).append(item)
    return out


def test_dicomweb_round_trip_then_idempotent_and_forced(orthanc: Orthanc, phantom_studies, tmp_path: Path) -> None:
    study_uid = next(iter(phantom_studies))
    service = start_service(tmp_path / "svc", **source_settings(orthanc))
    try:
        with service.client() as c:
            r = c.post("/v1/studies", json={"study_instance_uid": study_uid})
            assert r.status_code == 202, r.text
            assert r.headers["location"] == f"/v1/jobs/{r.json()['job']['id']}"
            job = service.wait_job(r.json()["job"]["id"])
            assert job["state"] == "done", job
            assert job["model_version"] == load_manifest()["version"]
            assert {"fetch", "deliver", "total", "view", "lungs"} <= set(job["timings_ms"])

            # QIDO-RS on Orthanc finds every output series, each written once.
            found = series_by_modality(orthanc, study_uid)
            assert set(OUTPUT_MODALITIES) <= set(found), found.keys()
            assert all(len(found[m]) == 1 for m in OUTPUT_MODALITIES)
            qido = orthanc.client().get(f"/dicom-web/studies/{study_uid}/series", params={"Modality": "SR"})
            assert qido.status_code == 200 and len(qido.json()) == 1

            result = c.get(f"/v1/studies/{study_uid}/result").json()
            assert result["study_instance_uid"] == study_uid
            assert result["job_id"] == job["id"]
            assert result["outputs"]["sr"]["series_instance_uid"] == found["SR"][0]["0020000E"]["Value"][0]
            n_instances = {m: found[m][0]["00201209"]["Value"][0] for m in OUTPUT_MODALITIES}

            # The same study again: not redone (same instances, same model version).
            again = service.wait_job(c.post("/v1/studies", json={"study_instance_uid": study_uid}).json()["job"]["id"])
            assert again["state"] == "done" and "already analysed" in again["note"]
            assert c.get(f"/v1/studies/{study_uid}/result").json()["job_id"] == job["id"]

            # Forced: analysed again, and the outputs replace the earlier ones (same UIDs).
            forced = service.wait_job(
                c.post("/v1/studies", json={"study_instance_uid": study_uid, "force": True}).json()["job"]["id"]
            )
            assert forced["state"] == "done" and "already analysed" not in (forced["note"] or "")
            after = series_by_modality(orthanc, study_uid)
            assert {m: len(after[m]) for m in OUTPUT_MODALITIES} == {m: 1 for m in OUTPUT_MODALITIES}
            assert {m: after[m][0]["00201209"]["Value"][0] for m in OUTPUT_MODALITIES} == n_instances
            assert c.get(f"/v1/studies/{study_uid}/result").json()["job_id"] == forced["id"]

            # A study the PACS does not hold fails at once with its reason.
            missing = service.wait_job(c.post("/v1/studies", json={"study_instance_uid": "1.2.3.4.5"}).json()["job"]["id"])
            assert missing["state"] == "failed" and "not found" in missing["error"]
            assert missing["attempts"] == 1
    finally:
        service.stop()


def test_unreachable_source_is_retried_with_backoff_then_fails(phantom_studies, tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    service = start_service(
        tmp_path / "svc",
        source_dicomweb_url=f"http://127.0.0.1:{port}/dicom-web",
        job_retries=2,
        retry_delay_s=0.3,
        lease_s=5,
    )
    try:
        with service.client() as c:
            job_id = c.post("/v1/studies", json={"study_instance_uid": next(iter(phantom_studies))}).json()["job"]["id"]
        job = service.wait_job(job_id, timeout=60)
        assert job["state"] == "failed"
        assert job["attempts"] == 3
        assert job["error"].startswith("gave up after 3 attempts") and "unreachable" in job["error"]
        log = service.proc.output()
        assert "retry 1 in 0.3 s" in log and "retry 2 in 0.6 s" in log
    finally:
        service.stop()


def test_jobs_survive_a_restart_and_stat_goes_first(orthanc: Orthanc, phantom_studies, tmp_path: Path) -> None:
    data = tmp_path / "svc"
    uids = list(phantom_studies)
    settings = source_settings(orthanc)
    service = start_service(data, worker=False, **settings)
    try:
        with service.client() as c:
            ids = [c.post("/v1/studies", json={"study_instance_uid": u, "force": True}).json()["job"]["id"] for u in uids[:3]]
            stat = c.post("/v1/studies", json={"study_instance_uid": uids[3], "priority": "stat", "force": True}).json()["job"]["id"]
    finally:
        service.stop()  # nothing has run: the jobs wait in the SQLite queue

    worker = start_worker(data, **settings)
    service = start_service(data, worker=False, **settings)
    try:
        jobs = {i: service.wait_job(i) for i in [*ids, stat]}
        assert all(j["state"] == "done" for j in jobs.values()), jobs
        first = min(jobs.values(), key=lambda j: j["started_at"])
        assert first["id"] == stat, "the STAT study must run before the routine ones queued earlier"
    finally:
        worker.stop()
        service.stop()


def test_an_uploaded_study_is_still_stored_to_the_pacs_when_submitted(orthanc: Orthanc, phantom_studies, tmp_path: Path) -> None:
    """An upload's result is kept, but its outputs were stored nowhere: a later job for the
    same study must analyse and store them rather than call it 'already analysed'."""
    uid, paths = list(phantom_studies.items())[2]
    service = start_service(tmp_path / "svc", **source_settings(orthanc))
    try:
        with service.client() as c:
            files = [("files", (p.name, p.read_bytes(), "application/dicom")) for p in paths]
            assert c.post("/v1/analyze", files=files).json()["delivered_to"] is None
            job = service.wait_job(c.post("/v1/studies", json={"study_instance_uid": uid}).json()["job"]["id"])
            assert job["state"] == "done" and "already analysed" not in (job["note"] or ""), job
            assert c.get(f"/v1/studies/{uid}/result").json()["delivered_to"] == f"dicomweb:{orthanc.dicomweb}"
        assert orthanc.output_series(uid)["SR"] == 1
    finally:
        service.stop()


def test_resent_pixels_are_analysed_again_and_an_upload_never_replaces_the_job_result(
    orthanc: Orthanc, phantom_studies, tmp_path: Path
) -> None:
    """Orthanc overwrites an instance re-sent under its SOP Instance UID: the next job sees other
    bytes and analyses the study again. An upload of the study afterwards is answered, but the
    study's result stays the job's (whose outputs are in the PACS)."""
    import io

    import numpy as np
    import pydicom

    uid, paths = list(phantom_studies.items())[3]
    service = start_service(tmp_path / "svc", **source_settings(orthanc))
    try:
        with service.client() as c:
            first = service.wait_job(c.post("/v1/studies", json={"study_instance_uid": uid, "force": True}).json()["job"]["id"])
            assert first["state"] == "done", first
            before = c.get(f"/v1/studies/{uid}/result").json()["source_digests"]
            same = service.wait_job(c.post("/v1/studies", json={"study_instance_uid": uid}).json()["job"]["id"])
            assert "already analysed" in same["note"], same

            ds = pydicom.dcmread(paths[0])
            ds.PixelData = np.ascontiguousarray(ds.pixel_array[::-1]).astype(ds.pixel_array.dtype).tobytes()
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            with orthanc.client() as o:
                o.post("/instances", content=buffer.getvalue()).raise_for_status()
            again = service.wait_job(c.post("/v1/studies", json={"study_instance_uid": uid}).json()["job"]["id"])
            assert again["state"] == "done" and "already analysed" not in (again["note"] or ""), again
            result = c.get(f"/v1/studies/{uid}/result").json()
            assert result["job_id"] == again["id"]
            changed = [k for k in before if result["source_digests"][k] != before[k]]
            assert changed == [str(ds.SOPInstanceUID)]

            files = [("files", (p.name, p.read_bytes(), "application/dicom")) for p in paths]
            upload = c.post("/v1/analyze", files=files)
            assert upload.status_code == 200 and upload.json()["origin"] == "upload" and upload.json()["job_id"] is None
            kept = c.get(f"/v1/studies/{uid}/result").json()
            assert kept["job_id"] == again["id"] and kept["delivered_to"] == f"dicomweb:{orthanc.dicomweb}"
        assert orthanc.output_series(uid)["SR"] == 1
    finally:
        service.stop()


def test_two_patients_under_one_study_uid_are_two_studies_each_analysed_apart(orthanc: Orthanc, phantom_studies, tmp_path: Path) -> None:
    """The same StudyInstanceUID under two Patient IDs: Orthanc keeps two studies. A job names
    its patient, fetches that patient's instances only, and its outputs land in that patient's
    study, referencing its images only; a job naming no patient refuses the mixture; an upload
    mixing the two is refused naming `files`; the same SOP Instance UIDs under two patients
    cannot be retrieved from Orthanc's DICOMweb, and the job says so."""
    from pydicom.uid import generate_uid

    _, paths = list(phantom_studies.items())[1]
    study_uid = generate_uid(entropy_srcs=["two-patients"])
    me, other = "CXR-PATIENT-A", "CXR-PATIENT-B"
    mine = relabelled(paths, study_uid=study_uid, patient_id=me, salt="a")
    theirs = relabelled(paths[:1], study_uid=study_uid, patient_id=other, salt="b")
    with orthanc.client() as o:
        for data in mine + theirs:
            o.post("/instances", content=data).raise_for_status()
    assert set(orthanc_studies(orthanc, study_uid)) == {me, other}, "Orthanc: two studies"
    service = start_service(tmp_path / "svc", **source_settings(orthanc))
    try:
        with service.client() as c:
            def submit(**body):
                r = c.post("/v1/studies", json={"study_instance_uid": study_uid, **body})
                assert r.status_code == 202, r.text
                return service.wait_job(r.json()["job"]["id"])

            unnamed = submit()
            assert unnamed["state"] == "failed" and unnamed["attempts"] == 1, unnamed
            assert "holds instances of 2 patients" in unnamed["error"] and me not in unnamed["error"]
            assert all(not s["outputs"] for s in orthanc_studies(orthanc, study_uid).values()), "nothing written"

            jobs = {patient: submit(patient_id=patient) for patient in (me, other)}
            assert all(j["state"] == "done" for j in jobs.values()), jobs
            assert {j["patient_id"] for j in jobs.values()} == {me, other}
            studies = orthanc_studies(orthanc, study_uid)
            for patient, study in studies.items():
                modalities = sorted(ds.Modality for ds in study["outputs"])
                assert {"SR", "PR", "SEG", "OT"} <= set(modalities), (patient, modalities)
                assert modalities.count("SR") == 1
                assert {str(ds.PatientID) for ds in study["outputs"]} == {patient}
                referenced = {str(e.value) for ds in study["outputs"] for e in ds.iterall() if e.keyword == "ReferencedSOPInstanceUID"}
                assert referenced & study["images"] and not referenced - study["images"] - {
                    str(ds.SOPInstanceUID) for ds in study["outputs"]
                }, f"{patient}'s outputs reference another patient's images"
            assert not {str(ds.SOPInstanceUID) for ds in studies[me]["outputs"]} & {str(ds.SOPInstanceUID) for ds in studies[other]["outputs"]}

            ambiguous = c.get(f"/v1/studies/{study_uid}/result")
            assert ambiguous.status_code == 409 and "patient_id" in ambiguous.json()["detail"]
            result = c.get(f"/v1/studies/{study_uid}/result", params={"patient_id": other}).json()
            assert result["patient_id"] == other and result["job_id"] == jobs[other]["id"] and len(result["images"]) == 1

            files = [("files", (f"{i}.dcm", data, "application/dicom")) for i, data in enumerate(mine[:1] + theirs)]
            upload = c.post("/v1/analyze", files=files)
            assert upload.status_code == 422 and upload.headers["content-type"].startswith("application/problem+json")
            assert upload.json()["detail"].startswith("files: ") and "2 patients" in upload.json()["detail"]
            assert other not in upload.json()["detail"]

            # After a patient merge: the same SOP Instance UIDs under a third Patient ID.
            merged_uid = generate_uid(entropy_srcs=["merged"])
            with orthanc.client() as o:
                for patient in ("CXR-PATIENT-OLD", "CXR-PATIENT-NEW"):
                    for data in relabelled(paths[:1], study_uid=merged_uid, patient_id=patient, salt="m", keep_sop_uids=True):
                        o.post("/instances", content=data).raise_for_status()
            r = c.post("/v1/studies", json={"study_instance_uid": merged_uid, "patient_id": "CXR-PATIENT-NEW"})
            merged = service.wait_job(r.json()["job"]["id"])
            assert merged["state"] == "failed" and merged["attempts"] == 1, merged
            assert "HTTP 404" in merged["error"] and "under two patients" in merged["error"], merged["error"]
        log = service.proc.output()
        assert me not in log and other not in log, "no Patient ID in the service's log"
    finally:
        service.stop()
