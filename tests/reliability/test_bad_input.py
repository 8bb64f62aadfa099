"""The bad-input corpus through the service's doors: the upload API, C-STORE to `cxr scp` and
C-STORE into Orthanc with the plugin. (The CLI door is tested in tests/service/test_analyze.py.)

For each malformed case: its specific reason comes back, the good image sent with it is still
analysed, the process keeps serving, and no patient name from the corpus reaches a log. Hostile
headers (window width 0, invalid dates and strings, ISO 2022 IR 87 with an empty first value,
zero pixel spacing) are analysed and their outputs stay valid: every output that reaches a PACS
passes dciodvfy with 0 errors. A study whose every image is rejected still gets an SR with each
reason, and in Orthanc its cxr-reason summarises them.
"""

from __future__ import annotations

import copy
import io
import shutil
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from tests.corpus import (
    HOSTILE_HEADER_CASES,
    JAPANESE_PATIENT_NAME,
    MALFORMED_CASES,
    NON_ASCII_PATIENT_NAME,
    PATIENT_NAME,
    REFERENCE_CASE,
    build_corpus,
)
from tests.service.procs import CXR, OUTPUT_MODALITIES, Proc, cxr_env, free_port, start_service, wait_until
from tests.service.test_service_scp import PeerSCP, echo

pytestmark = [pytest.mark.slow, pytest.mark.reliability]

PATIENT_NAMES = (
    PATIENT_NAME,
    NON_ASCII_PATIENT_NAME,
    PATIENT_NAME.replace("^", " "),
    NON_ASCII_PATIENT_NAME.replace("^", " "),
    JAPANESE_PATIENT_NAME,
    "山田",
    "Yamada^Tarou",
)
NOT_ANALYSED = ("CXR009", "99CXR")
# What a case becomes once an SCU has read and re-sent it: the file's end is lost in transit, so
# the receiver sees a complete file whose pixel data is too short.
DIMSE_REASONS = {"truncated": "short pixel data"}


def dimse_reason(case) -> str:
    return DIMSE_REASONS.get(case.name, case.reason_contains)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return {case.name: case for case in build_corpus(tmp_path_factory.mktemp("corpus"), seed=11)}


def assert_no_patient_names(text: str) -> None:
    for name in PATIENT_NAMES:
        assert name not in text, f"patient name {name!r} leaked into a log"


def main_study(corpus) -> str:
    return corpus[REFERENCE_CASE].study_instance_uid


def hostile_in_main_study(corpus) -> list[str]:
    return [n for n in HOSTILE_HEADER_CASES if corpus[n].study_instance_uid == main_study(corpus)]


def rejected_in_main_study(corpus) -> list[str]:
    return [n for n in MALFORMED_CASES if n in corpus and corpus[n].study_instance_uid == main_study(corpus)]


def sendable(path: Path) -> pydicom.Dataset | None:
    """The dataset an SCU can send (None: pydicom on the sending side cannot read it)."""
    try:
        ds = pydicom.dcmread(path)
        ds.SOPClassUID  # noqa: B018 - an SCU needs it to propose a context
        ds.file_meta.TransferSyntaxUID  # noqa: B018
    except Exception:  # noqa: BLE001 - the SCU cannot even parse it: nothing to send over DIMSE
        return None
    return ds


def rejected_only_study(corpus, names: list[str]) -> tuple[str, list[tuple[str, pydicom.Dataset]]]:
    """Copies of the sendable rejected cases in a study of their own (new UIDs)."""
    study, series = generate_uid(entropy_srcs=["all-rejected-study"]), generate_uid(entropy_srcs=["all-rejected-series"])
    copies = []
    for name in names:
        ds = sendable(corpus[name].path)
        if ds is None:
            continue
        ds = copy.deepcopy(ds)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["all-rejected", name])
        copies.append((name, ds))
    return study, copies


def not_analysed_texts(ds: pydicom.Dataset) -> list[str]:
    out = []
    for item in _walk(ds):
        code = item.get("ConceptNameCodeSequence")
        if code and (code[0].CodeValue, code[0].CodingSchemeDesignator) == NOT_ANALYSED:
            out.append(str(item.TextValue))
    return out


def _walk(ds: pydicom.Dataset):
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                yield item
                yield from _walk(item)


def dciodvfy_errors(datasets: list[pydicom.Dataset], folder: Path) -> dict[str, list[str]]:
    tool = shutil.which("dciodvfy")
    if tool is None:
        pytest.fail("dciodvfy (Debian dicom3tools) is required: make system-deps")
    folder.mkdir(parents=True, exist_ok=True)
    errors = {}
    for index, ds in enumerate(datasets):
        path = folder / f"{index:03d}-{ds.Modality}.dcm"
        ds.save_as(path, enforce_file_format=True)
        run = subprocess.run([tool, str(path)], capture_output=True, text=True, timeout=60, check=False)
        found = [line for line in (run.stdout + run.stderr).splitlines() if line.startswith("Error")]
        if found:
            errors[path.name] = found
    return errors


def files_of(*cases) -> list:
    return [("files", (f"{case.name}.dcm", case.path.read_bytes(), "application/dicom")) for case in cases]


# --- the upload API ---------------------------------------------------------------------------


def test_each_bad_file_through_the_upload_api(corpus, tmp_path: Path) -> None:
    service = start_service(tmp_path / "api", max_pixels=50_000_000)
    reference = corpus[REFERENCE_CASE]
    reference_uid = str(pydicom.dcmread(reference.path, stop_before_pixels=True).SOPInstanceUID)
    try:
        with service.client() as c:
            for name in MALFORMED_CASES:
                if name not in corpus:
                    continue
                case = corpus[name]
                r = c.post("/v1/analyze", files=files_of(reference, case))
                if r.status_code == 422:  # the bad file names another study: the problem says so
                    assert "studies" in r.json()["detail"], (name, r.text)
                    continue
                assert r.status_code == 200, (name, r.status_code, r.text[:500])
                doc = r.json()
                images = {i["sop_instance_uid"]: i for i in doc["images"]}
                assert images[reference_uid]["analysed"], f"{name}: the good image beside it was not analysed"
                reasons = [i["reason"] for i in doc["images"] if not i["analysed"]] + [u["reason"] for u in doc["not_attributed"]]
                assert any(case.reason_contains in reason for reason in reasons), (name, case.reason_contains, reasons)
                assert case.reason_contains[:60] in doc["summary"], (name, doc["summary"])
                assert doc["outputs"]["sr"] is not None, f"{name}: no SR"

            # Hostile headers beside the good image: analysed, every output written.
            for name in hostile_in_main_study(corpus):
                r = c.post("/v1/analyze", files=files_of(reference, corpus[name]))
                assert r.status_code == 200, (name, r.text[:500])
                doc = r.json()
                assert all(i["analysed"] for i in doc["images"]), (name, doc["images"])
                assert doc["not_written"] == [] and doc["summary"] is None, (name, doc["not_written"])
            japanese = c.post("/v1/analyze", files=files_of(corpus["japanese_iso2022_empty_first_value"]))
            assert japanese.status_code == 200 and japanese.json()["not_written"] == [], japanese.text[:500]

            # Every image rejected: still an answer, with an SR and every reason.
            rejected = [corpus[n] for n in rejected_in_main_study(corpus)]
            r = c.post("/v1/analyze", files=files_of(*rejected))
            assert r.status_code == 200, r.text[:500]
            doc = r.json()
            assert doc["outputs"]["sr"] is not None and not any(i["analysed"] for i in doc["images"])
            assert doc["summary"].startswith(f"0 of {len(rejected)} images analysed")
            assert c.get("/readyz").status_code == 200
    finally:
        service.stop()
    assert_no_patient_names(service.proc.output())


# --- C-STORE to cxr scp -----------------------------------------------------------------------


def _c_store(port: int, ae_title: str, ds: pydicom.Dataset) -> int | None:
    """C-STORE one dataset; None when no association can be made for it (no transfer syntax)."""
    from pynetdicom import AE

    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    if not assoc.is_established:
        return None
    try:
        status = assoc.send_c_store(ds)
        return int(status.Status) if status else None
    finally:
        assoc.release()


def test_each_bad_file_through_c_store_to_cxr_scp(corpus, tmp_path: Path) -> None:
    peer = PeerSCP()
    port = free_port()
    env = cxr_env(
        tmp_path / "scp", scp_port=port, scp_idle_s=1.5, destination_ae_title="PEER",
        destination_ae_host="127.0.0.1", destination_ae_port=peer.port,
    )  # fmt: skip
    proc = Proc("scp", [str(CXR), "scp"], tmp_path / "scp.log", env=env).start()
    study_uid = main_study(corpus)
    try:
        wait_until(lambda: "cxr scp ready" in proc.output(), timeout=60, what="cxr scp")
        sent, unsendable = [], []
        names = (REFERENCE_CASE, *hostile_in_main_study(corpus), "japanese_iso2022_empty_first_value", *MALFORMED_CASES)
        for name in names:
            ds = sendable(corpus[name].path) if name in corpus else None
            status = None if ds is None else _c_store(port, "CXR", ds)
            if status is None:  # unreadable by the SCU, or refused at association
                unsendable.append(name)
                continue
            sent.append((name, status))
            assert echo(port) == 0x0000, f"cxr scp stopped answering after {name}"
        assert dict(sent)[REFERENCE_CASE] == 0x0000
        rejected_study, copies = rejected_only_study(corpus, rejected_in_main_study(corpus))
        copies = [(n, ds) for n, ds in copies if _c_store(port, "CXR", ds) == 0x0000]
        assert len(copies) >= 8, [n for n, _ in copies]

        def srs() -> dict[str, pydicom.Dataset]:
            with peer.lock:
                return {str(ds.StudyInstanceUID): ds for ds in peer.received if ds.Modality == "SR"}

        japanese_study = corpus["japanese_iso2022_empty_first_value"].study_instance_uid
        wanted = {study_uid, rejected_study, japanese_study}
        wait_until(lambda: wanted <= set(srs()), timeout=240, what="the SRs of the three studies at the peer")
        text = " ".join(not_analysed_texts(srs()[study_uid]))
        analysed_bad = [n for n, s in sent if n in MALFORMED_CASES and s == 0x0000]
        print(f"sent {sent}; not sendable over DIMSE: {unsendable}")
        assert len(analysed_bad) >= 10, f"too few bad cases reached the SCP: {sent}"
        for name in analysed_bad:
            if corpus[name].study_instance_uid == study_uid:
                assert dimse_reason(corpus[name]) in text, f"{name}: reason {dimse_reason(corpus[name])!r} not in the SR"
        rejected_texts = " ".join(not_analysed_texts(srs()[rejected_study]))
        for name, _ in copies:
            assert dimse_reason(corpus[name]) in rejected_texts, f"{name}: not in the all-rejected study's SR"
        assert str(srs()[japanese_study].PatientName) == JAPANESE_PATIENT_NAME
        with peer.lock:
            received = list(peer.received)
        assert {ds.Modality for ds in received} >= set(OUTPUT_MODALITIES)
        errors = dciodvfy_errors(received, tmp_path / "received")
        assert not errors, errors
    finally:
        proc.stop()
        peer.stop()
    assert_no_patient_names(proc.output())


# --- C-STORE into Orthanc, with the plugin ------------------------------------------------------


def test_each_bad_file_through_c_store_into_orthanc(corpus, tmp_path: Path) -> None:
    """The PACS door: Orthanc stores what it accepts, the plugin and service analyse the study,
    and the SR in Orthanc names each bad image's reason; cxr-reason summarises them; a study of
    rejected images only gets its SR and a cxr-reason too; every output passes dciodvfy."""
    from tests.service.procs import start_orthanc

    service_port = free_port()
    orthanc = start_orthanc(tmp_path / "orthanc", plugin_service_url=f"http://127.0.0.1:{service_port}")
    service = start_service(tmp_path / "svc", port=service_port, **orthanc.source_settings())
    study_uid = main_study(corpus)
    try:
        stored = []
        for name in (REFERENCE_CASE, *hostile_in_main_study(corpus), *MALFORMED_CASES):
            ds = sendable(corpus[name].path) if name in corpus else None
            if ds is not None and _c_store(orthanc.dicom_port, "ORTHANC", ds) == 0:
                stored.append(name)
        assert REFERENCE_CASE in stored and len(stored) >= 8, stored
        rejected_study, copies = rejected_only_study(corpus, rejected_in_main_study(corpus))
        copies = [(n, ds) for n, ds in copies if _c_store(orthanc.dicom_port, "ORTHANC", ds) == 0]
        assert len(copies) >= 6, [n for n, _ in copies]

        def done(uid: str) -> dict | None:
            orthanc_id = orthanc.study_id(uid)
            meta = orthanc.metadata(orthanc_id) if orthanc_id else {}
            return meta if meta.get("cxr-status") == "done" else None

        main_meta = wait_until(lambda: done(study_uid), timeout=240, interval=1.0, what="the main study done in Orthanc")
        rejected_meta = wait_until(lambda: done(rejected_study), timeout=240, interval=1.0, what="the rejected study done")
        main_sr = _orthanc_outputs(orthanc, study_uid, modalities=("SR",))
        text = " ".join(not_analysed_texts(main_sr[0]))
        same_study = [n for n in stored if n in MALFORMED_CASES and corpus[n].study_instance_uid in (None, study_uid)]
        assert len(same_study) >= 8, stored
        for name in same_study:
            assert dimse_reason(corpus[name]) in text, f"{name}: {dimse_reason(corpus[name])!r} not in the SR"
        assert "images analysed; not analysed: " in main_meta["cxr-reason"], main_meta
        assert rejected_meta["cxr-reason"].startswith(f"0 of {len(copies)} images analysed"), rejected_meta
        rejected_texts = " ".join(not_analysed_texts(_orthanc_outputs(orthanc, rejected_study, modalities=("SR",))[0]))
        for name, _ in copies:
            assert dimse_reason(corpus[name]) in rejected_texts, name
        outputs = _orthanc_outputs(orthanc, study_uid) + _orthanc_outputs(orthanc, rejected_study)
        errors = dciodvfy_errors(outputs, tmp_path / "outputs")
        assert not errors, errors
    finally:
        service.stop()
        orthanc.stop()
    assert_no_patient_names(service.proc.output())
    assert_no_patient_names(orthanc.log())


def _orthanc_outputs(orthanc, study_uid: str, *, modalities: tuple[str, ...] = OUTPUT_MODALITIES) -> list[pydicom.Dataset]:
    """Our outputs of a study as Orthanc stores them (REST API, the stored files)."""
    out = []
    with orthanc.client() as c:
        orthanc_id = orthanc.study_id(study_uid)
        for series in c.get(f"/studies/{orthanc_id}/series").json():
            if series["MainDicomTags"].get("Modality") in modalities:
                for instance in series["Instances"]:
                    out.append(pydicom.dcmread(io.BytesIO(c.get(f"/instances/{instance}/file").content)))
    return out
