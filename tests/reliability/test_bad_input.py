"""The bad-input corpus through the service's doors: the upload API and C-STORE to `cxr scp`.

For each malformed case: its specific reason comes back, the good image sent with it is still
analysed, the process keeps serving, and no patient name from the corpus reaches a log.
(The CLI door is tested in tests/service/test_analyze.py.)
"""

from __future__ import annotations

import io
from pathlib import Path

import pydicom
import pytest

from tests.corpus import MALFORMED_CASES, NON_ASCII_PATIENT_NAME, PATIENT_NAME, REFERENCE_CASE, build_corpus
from tests.service.procs import CXR, Proc, cxr_env, free_port, start_service, wait_until
from tests.service.test_service_scp import PeerSCP, echo

pytestmark = [pytest.mark.slow, pytest.mark.reliability]

PATIENT_NAMES = (PATIENT_NAME, NON_ASCII_PATIENT_NAME, PATIENT_NAME.replace("^", " "), NON_ASCII_PATIENT_NAME.replace("^", " "))


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return {case.name: case for case in build_corpus(tmp_path_factory.mktemp("corpus"), seed=11)}


def assert_no_patient_names(text: str) -> None:
    for name in PATIENT_NAMES:
        assert name not in text, f"patient name {name!r} leaked into a log"


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
                files = [
                    ("files", ("reference.dcm", reference.path.read_bytes(), "application/dicom")),
                    ("files", (f"{name}.dcm", case.path.read_bytes(), "application/dicom")),
                ]
                r = c.post("/v1/analyze", files=files)
                if r.status_code == 422:  # the bad file names another study: the problem says so
                    assert "studies" in r.json()["detail"], (name, r.text)
                    continue
                assert r.status_code == 200, (name, r.status_code, r.text[:500])
                doc = r.json()
                images = {i["sop_instance_uid"]: i for i in doc["images"]}
                assert images[reference_uid]["analysed"], f"{name}: the good image beside it was not analysed"
                reasons = [i["reason"] for i in doc["images"] if not i["analysed"]] + [u["reason"] for u in doc["not_attributed"]]
                assert any(case.reason_contains in reason for reason in reasons), (name, case.reason_contains, reasons)
            assert c.get("/readyz").status_code == 200
    finally:
        service.stop()
    assert_no_patient_names(service.proc.output())


def test_each_bad_file_through_c_store_to_cxr_scp(corpus, tmp_path: Path) -> None:
    from pynetdicom import AE

    peer = PeerSCP()
    port = free_port()
    env = cxr_env(
        tmp_path / "scp", scp_port=port, scp_idle_s=1.5, destination_ae_title="PEER",
        destination_ae_host="127.0.0.1", destination_ae_port=peer.port,
    )  # fmt: skip
    proc = Proc("scp", [str(CXR), "scp"], tmp_path / "scp.log", env=env).start()
    try:
        wait_until(lambda: "cxr scp ready" in proc.output(), timeout=60, what="cxr scp")
        sent, unsendable = [], []
        for name in (REFERENCE_CASE, *MALFORMED_CASES):
            if name not in corpus:
                continue
            try:
                ds = pydicom.dcmread(corpus[name].path)
                ds.SOPClassUID  # noqa: B018 - an SCU needs it to propose a context
                ds.file_meta.TransferSyntaxUID  # noqa: B018
            except Exception:  # the SCU cannot even parse it: nothing to send over DIMSE
                unsendable.append(name)
                continue
            ae = AE(ae_title="TESTSCU")
            ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
            assoc = ae.associate("127.0.0.1", port, ae_title="CXR")
            if not assoc.is_established:  # e.g. a transfer syntax the SCP does not accept: refused at association
                unsendable.append(name)
                continue
            try:
                status = assoc.send_c_store(ds)
                sent.append((name, int(status.Status) if status else None))
            finally:
                assoc.release()
            assert echo(port) == 0x0000, f"cxr scp stopped answering after {name}"
        assert dict(sent)[REFERENCE_CASE] == 0x0000
        # The study closes; its outputs (with a reason per bad image in the SR) reach the peer.
        wait_until(lambda: any(ds.Modality == "SR" for ds in list(peer.received)), timeout=120, what="the SR at the peer")
        sr = next(ds for ds in list(peer.received) if ds.Modality == "SR")
        text = " ".join(str(item.get("TextValue", "")) for item in _walk(sr))
        analysed_bad = [n for n, s in sent if n != REFERENCE_CASE and s == 0x0000]
        print(f"sent {sent}; not sendable over DIMSE: {unsendable}")
        assert len(analysed_bad) >= 6, f"too few bad cases reached the SCP: {sent}"
        for name in analysed_bad:
            fragment = corpus[name].reason_contains
            if fragment and corpus[name].study_instance_uid in (None, corpus[REFERENCE_CASE].study_instance_uid):
                assert fragment in text, f"{name}: reason {fragment!r} not in the SR"
    finally:
        proc.stop()
        peer.stop()
    assert_no_patient_names(proc.output())


def _walk(ds: pydicom.Dataset):
    for elem in ds:
        if elem.VR == "SQ":
            for item in elem.value:
                yield item
                yield from _walk(item)


def test_each_bad_file_through_c_store_into_orthanc(corpus, tmp_path: Path) -> None:
    """The PACS door: Orthanc stores what it accepts, the plugin and service analyse the study,
    and the SR in Orthanc names each bad image's reason; good studies keep flowing."""
    from pynetdicom import AE

    from tests.service.procs import start_orthanc

    service_port = free_port()
    orthanc = start_orthanc(tmp_path / "orthanc", plugin_service_url=f"http://127.0.0.1:{service_port}")
    service = start_service(tmp_path / "svc", port=service_port, **orthanc.source_settings())
    try:
        study_uid = corpus[REFERENCE_CASE].study_instance_uid
        stored = []
        for name in (REFERENCE_CASE, *MALFORMED_CASES):
            if name not in corpus:
                continue
            try:
                ds = pydicom.dcmread(corpus[name].path)
                context = (ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
            except Exception:
                continue  # not even an SCU can parse it
            ae = AE(ae_title="TESTSCU")
            ae.add_requested_context(*context)
            assoc = ae.associate("127.0.0.1", orthanc.dicom_port, ae_title="ORTHANC")
            if assoc.is_established:
                try:
                    status = assoc.send_c_store(ds)
                    if status and int(status.Status) == 0:
                        stored.append(name)
                finally:
                    assoc.release()
        assert REFERENCE_CASE in stored and len(stored) >= 6, stored

        def sr_text() -> str | None:
            with orthanc.client() as c:
                r = c.get(f"/dicom-web/studies/{study_uid}/series", params={"Modality": "SR"})
                if r.status_code != 200 or not r.json():
                    return None
                series_uid = r.json()[0]["0020000E"]["Value"][0]
                inst = c.get(f"/dicom-web/studies/{study_uid}/series/{series_uid}/instances").json()[0]["00080018"]["Value"][0]
                raw = c.get(f"/dicom-web/studies/{study_uid}/series/{series_uid}/instances/{inst}", headers={"Accept": "multipart/related; type=\"application/dicom\""})
                body = raw.content
                start = body.index(b"DICM") - 128
                ds = pydicom.dcmread(io.BytesIO(body[start:]))
                return " ".join(str(i.get("TextValue", "")) for i in _walk(ds))

        text = wait_until(sr_text, timeout=180, interval=1.0, what="the SR in Orthanc")
        same_study = [n for n in stored if n != REFERENCE_CASE and corpus[n].study_instance_uid in (None, study_uid)]
        assert len(same_study) >= 5, stored
        for name in same_study:
            assert corpus[name].reason_contains in text, f"{name}: {corpus[name].reason_contains!r} not in the SR"
    finally:
        service.stop()
        orthanc.stop()
    assert_no_patient_names(service.proc.output())
    assert_no_patient_names(orthanc.log())
