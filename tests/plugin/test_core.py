"""The plugin's logic against a fake Orthanc and a fake service (no network, no Orthanc)."""

from __future__ import annotations

from typing import Any

import pytest

from cxr_plugin.core import CxrPlugin, ServiceConfig, ServiceRefused, ServiceUnavailable


class FakeOrthanc:
    def __init__(self) -> None:
        self.studies: dict[str, dict[str, Any]] = {}
        self.meta: dict[str, dict[str, str]] = {}
        self.md5: dict[str, str] = {}  # instance id -> MD5 of its stored file (default: from the id)
        self.text_requests: list[str] = []

    def add(self, orthanc_id: str, uid: str, series: list[tuple[str, int]], *, patient_id: str = "P1") -> None:
        self.studies[orthanc_id] = {
            "MainDicomTags": {"StudyInstanceUID": uid},
            "PatientMainDicomTags": {"PatientID": patient_id},
            "series": [
                {"MainDicomTags": {"Modality": m}, "Instances": [f"{orthanc_id}-{s}-{k}" for k in range(n)]}
                for s, (m, n) in enumerate(series)
            ],
        }
        self.meta.setdefault(orthanc_id, {})

    def get_json(self, uri: str) -> Any:
        parts = uri.split("?")[0].strip("/").split("/")
        if parts == ["studies"]:
            return list(self.studies)
        study = parts[1]
        if len(parts) == 2:
            return self.studies[study]
        if parts[2] == "series":
            return self.studies[study]["series"]
        if parts[2] == "metadata":
            return dict(self.meta[study])
        raise KeyError(uri)

    def get_text(self, uri: str) -> str:
        self.text_requests.append(uri)
        parts = uri.strip("/").split("/")
        if parts[0] != "instances" or parts[2:] != ["attachments", "dicom", "md5"]:
            raise KeyError(uri)
        return self.md5.get(parts[1], f"md5-of-{parts[1]}")

    def put(self, uri: str, body: str) -> None:
        _, _, study, _, key = uri.split("/")
        self.meta[study][key] = body


class FakeService:
    def __init__(self) -> None:
        self.down = 0  # answer "unavailable" this many times first
        self.refuse = False
        self.submitted: list[tuple[str, bool]] = []
        self.patients: list[str | None] = []
        self.jobs: dict[str, dict[str, Any]] = {}

    def submit(self, uid: str, *, force: bool, patient_id: str | None = None) -> dict:
        if self.down:
            self.down -= 1
            raise ServiceUnavailable("service unreachable (URLError)")
        if self.refuse:
            raise ServiceRefused("HTTP 422: study_instance_uid: bad")
        self.submitted.append((uid, force))
        self.patients.append(patient_id)
        job = {"id": f"job{len(self.submitted)}", "state": "queued"}
        self.jobs[job["id"]] = job
        return job

    def job(self, job_id: str) -> dict:
        return self.jobs[job_id]


@pytest.fixture()
def setup() -> tuple[FakeOrthanc, FakeService, CxrPlugin, list[float]]:
    orthanc, service, sleeps = FakeOrthanc(), FakeService(), []
    plugin = CxrPlugin(orthanc, service, retry_initial_s=1, retry_max_s=4, sleep=sleeps.append)  # type: ignore[arg-type]
    return orthanc, service, plugin, sleeps


def test_only_cr_dx_studies_not_yet_analysed_are_submitted(setup) -> None:
    orthanc, service, plugin, _ = setup
    orthanc.add("a", "1.1", [("CR", 2)])
    orthanc.add("b", "1.2", [("CT", 5)])
    orthanc.add("c", "1.3", [("SR", 1), ("PR", 1)])
    assert plugin.should_analyse("a") and not plugin.should_analyse("b") and not plugin.should_analyse("c")
    plugin.submit("a", force=False)
    assert orthanc.meta["a"]["cxr-status"] == "queued" and orthanc.meta["a"]["cxr-job"] == "job1"
    assert not plugin.should_analyse("a"), "a queued study is not submitted twice"
    service.jobs["job1"]["state"] = "done"
    plugin.poll_jobs()
    assert orthanc.meta["a"]["cxr-status"] == "done"
    # Our outputs arrive (SR/PR/SEG/SC series): same CR/DX count, nothing to do.
    orthanc.studies["a"]["series"].append({"MainDicomTags": {"Modality": "SR"}, "Instances": ["x"]})
    assert not plugin.should_analyse("a")
    # A new radiograph joins the study: analysed again.
    orthanc.studies["a"]["series"].append({"MainDicomTags": {"Modality": "DX"}, "Instances": ["y"]})
    assert plugin.should_analyse("a")


def test_an_overwritten_instance_makes_the_study_analysed_again(setup) -> None:
    """Orthanc overwrites an instance re-sent under its SOP Instance UID: same instance id and
    count, another stored file (MD5). The fingerprint in cxr-instances tells it apart."""
    orthanc, service, plugin, _ = setup
    orthanc.add("a", "1.1", [("CR", 2), ("DX", 1)])
    plugin.submit("a", force=False)
    fingerprint = orthanc.meta["a"]["cxr-instances"]
    assert fingerprint.startswith("3:") and len(fingerprint) == 2 + 64
    service.jobs["job1"]["state"] = "done"
    plugin.poll_jobs()
    assert not plugin.should_analyse("a"), "a repeated notification with the same files"
    orthanc.studies["a"]["series"].append({"MainDicomTags": {"Modality": "SEG"}, "Instances": ["seg"]})
    assert not plugin.should_analyse("a"), "our own outputs arriving"
    assert not any("/seg/" in uri for uri in orthanc.text_requests), "only CR/DX files are fingerprinted"

    orthanc.md5["a-0-1"] = "other-pixels"
    assert plugin.should_analyse("a"), "the overwritten instance changes the fingerprint"
    plugin.submit("a", force=False)
    assert orthanc.meta["a"]["cxr-instances"] != fingerprint and service.submitted == [("1.1", False), ("1.1", False)]
    # Same files again (the order Orthanc lists them in does not matter).
    service.jobs["job2"]["state"] = "done"
    plugin.poll_jobs()
    orthanc.studies["a"]["series"].reverse()
    assert not plugin.should_analyse("a")
    # Earlier versions stored the count: such a study is submitted once more (the service then
    # finds the same instances and does not analyse again).
    orthanc.meta["a"]["cxr-instances"] = "3"
    assert plugin.should_analyse("a")


def test_the_study_is_submitted_with_its_patient_id(setup) -> None:
    """Orthanc's study is Patient ID + StudyInstanceUID: two patients under one UID are two
    studies, and each job names its patient."""
    orthanc, service, plugin, _ = setup
    orthanc.add("a", "1.1", [("CR", 1)], patient_id="P1")
    orthanc.add("b", "1.1", [("CR", 1)], patient_id="P2")
    plugin.submit("a", force=False)
    plugin.submit("b", force=False)
    assert service.submitted == [("1.1", False), ("1.1", False)] and service.patients == ["P1", "P2"]
    assert orthanc.meta["a"]["cxr-job"] != orthanc.meta["b"]["cxr-job"]


def test_service_down_is_retried_with_backoff(setup) -> None:
    orthanc, service, plugin, sleeps = setup
    orthanc.add("a", "1.1", [("DX", 1)])
    service.down = 4
    plugin.submit("a", force=False)
    assert sleeps == [1, 2, 4, 4]
    assert service.submitted == [("1.1", False)]


def test_refusal_and_failure_reach_the_metadata(setup) -> None:
    orthanc, service, plugin, _ = setup
    orthanc.add("a", "1.1", [("DX", 1)])
    orthanc.add("b", "1.2", [("DX", 1)])
    service.refuse = True
    plugin.submit("a", force=False)
    assert orthanc.meta["a"]["cxr-status"] == "failed" and "refused" in orthanc.meta["a"]["cxr-reason"]
    service.refuse = False
    plugin.submit("b", force=True)
    service.jobs["job1"].update(state="failed", error="study 1.2 has no CR or DX instance at the source")
    plugin.poll_jobs()
    assert orthanc.meta["b"] == {**orthanc.meta["b"], "cxr-status": "failed", "cxr-reason": "study 1.2 has no CR or DX instance at the source"}


def test_studies_still_queued_are_resubmitted_at_start(setup) -> None:
    orthanc, service, plugin, _ = setup
    orthanc.add("a", "1.1", [("DX", 1)])
    orthanc.add("b", "1.2", [("DX", 1)])
    orthanc.meta["a"]["cxr-status"] = "queued"
    orthanc.meta["b"]["cxr-status"] = "done"
    assert plugin.resubmit_queued() == 1
    item = plugin._inbox.get_nowait()
    plugin._handle(item)
    assert service.submitted == [("1.1", False)]


def test_a_done_job_writes_the_triage_priority_and_a_new_submission_clears_it(setup) -> None:
    orthanc, service, plugin, _ = setup
    orthanc.add("a", "1.1", [("CR", 1)])
    plugin.submit("a", force=False)
    assert orthanc.meta["a"]["cxr-priority"] == ""
    service.jobs["job1"].update(state="done", triage_priority="urgent")
    plugin.poll_jobs()
    assert orthanc.meta["a"]["cxr-status"] == "done" and orthanc.meta["a"]["cxr-priority"] == "urgent"
    plugin.submit("a", force=True)
    assert orthanc.meta["a"]["cxr-status"] == "queued" and orthanc.meta["a"]["cxr-priority"] == ""
    service.jobs["job2"].update(state="done", triage_priority="unassessed")
    plugin.poll_jobs()
    assert orthanc.meta["a"]["cxr-priority"] == "unassessed"
    plugin.submit("a", force=True)
    service.jobs["job3"].update(state="failed", error="study 1.1 has no CR or DX instance at the source")
    plugin.poll_jobs()
    assert orthanc.meta["a"]["cxr-status"] == "failed" and orthanc.meta["a"]["cxr-priority"] == ""


def test_an_orthanc_without_the_priority_metadata_still_gets_the_status(setup, caplog) -> None:
    orthanc, service, plugin, _ = setup
    orthanc.add("a", "1.1", [("CR", 1)])
    put = orthanc.put

    def refuse_priority(uri: str, body: str) -> None:
        if uri.endswith("/cxr-priority"):
            raise RuntimeError("Unknown metadata: cxr-priority")
        put(uri, body)

    orthanc.put = refuse_priority  # type: ignore[method-assign]
    plugin.submit("a", force=False)
    service.jobs["job1"].update(state="done", note="1 of 2 images analysed", triage_priority="urgent")
    plugin.poll_jobs()
    assert orthanc.meta["a"]["cxr-status"] == "done" and orthanc.meta["a"]["cxr-reason"] == "1 of 2 images analysed"
    assert orthanc.meta["a"]["cxr-instances"] and "cxr-priority" not in orthanc.meta["a"]
    assert "could not write cxr-priority (is it in UserMetadata?)" in caplog.text


def test_service_config_is_checked() -> None:
    with pytest.raises(ValueError, match="url"):
        ServiceConfig(url="ftp://x", token="t")
    with pytest.raises(ValueError, match="token"):
        ServiceConfig(url="http://x", token="")


def test_only_the_entry_file_imports_orthanc() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "plugin" / "cxr_plugin"
    importing = sorted(p.name for p in root.glob("*.py") if "import orthanc" in p.read_text())
    assert importing == ["entry.py"]
