"""The embedded mode against a real Orthanc: DICOMweb fetch, analysis, STOW-RS, QIDO-RS.

Real processes: Orthanc (Debian packages) and `cxr serve` / `cxr worker` on the SQLite queue.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.service.procs import (
    OUTPUT_MODALITIES,
    Orthanc,
    free_port,
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
            assert job["model_version"] == "0.1.0-demo"
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
