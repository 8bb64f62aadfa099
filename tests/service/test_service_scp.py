"""`cxr scp` as a real process: a pynetdicom SCU sends a PhantomCXR study, the outputs arrive at
a pynetdicom Storage SCP test peer; handler failures answer with a failure status."""

from __future__ import annotations

import threading
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import UID
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import Verification

from tests.service.procs import CXR, Proc, cxr_env, free_port, wait_until

pytestmark = pytest.mark.slow


class PeerSCP:
    """The destination AE: a Storage SCP that keeps what it receives."""

    def __init__(self) -> None:
        self.received: list[pydicom.Dataset] = []
        self.lock = threading.Lock()
        ae = AE(ae_title="PEER")
        ae.supported_contexts = AllStoragePresentationContexts
        self.server = ae.start_server(("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, self.on_store)])
        self.port = int(self.server.server_address[1])

    def on_store(self, event: evt.Event) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        with self.lock:
            self.received.append(ds)
        return 0x0000

    def stop(self) -> None:
        self.server.shutdown()


def send(paths: list[Path] | list[pydicom.Dataset], *, port: int, ae_title: str = "CXR") -> list[int]:
    datasets = [pydicom.dcmread(p) if isinstance(p, Path) else p for p in paths]
    ae = AE(ae_title="TESTSCU")
    for ds in datasets:
        ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(ds).Status) for ds in datasets]
    finally:
        assoc.release()


def echo(port: int) -> int:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="CXR")
    assert assoc.is_established
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


@pytest.fixture()
def peer() -> PeerSCP:
    scp = PeerSCP()
    yield scp
    scp.stop()


def test_study_sent_to_cxr_scp_comes_back_as_sr_gsps_seg_sc(phantom_studies, peer: PeerSCP, tmp_path: Path) -> None:
    port = free_port()
    env = cxr_env(
        tmp_path / "scp",
        scp_port=port,
        scp_idle_s=1.5,
        destination_ae_title="PEER",
        destination_ae_host="127.0.0.1",
        destination_ae_port=peer.port,
        lease_s=10,
    )
    proc = Proc("scp", [str(CXR), "scp"], tmp_path / "scp.log", env=env).start()
    try:
        wait_until(lambda: "cxr scp ready" in proc.output(), timeout=60, what="cxr scp")
        assert echo(port) == 0x0000
        uid, paths = next((u, p) for u, p in phantom_studies.items() if len(p) >= 2)
        assert send(paths, port=port) == [0x0000] * len(paths)

        # An instance without StudyInstanceUID is refused with a failure status; the SCP lives on.
        broken = pydicom.dcmread(paths[0])
        del broken.StudyInstanceUID
        broken.SOPInstanceUID = "1.2.3.4.5.6.7"
        assert send([broken], port=port) == [0xA900]
        assert echo(port) == 0x0000

        expected = {
            UID("1.2.840.10008.5.1.4.1.1.88.34"),  # Comprehensive 3D SR
            UID("1.2.840.10008.5.1.4.1.1.11.1"),  # Grayscale Softcopy Presentation State
            UID("1.2.840.10008.5.1.4.1.1.66.4"),  # Segmentation
        }

        def arrived() -> bool:
            with peer.lock:
                classes = {ds.SOPClassUID for ds in peer.received}
            return expected <= classes and any(c.name.endswith("Secondary Capture Image Storage") for c in classes)

        wait_until(arrived, timeout=120, what="the outputs at the peer")
        with peer.lock:
            received = list(peer.received)
        assert {str(ds.StudyInstanceUID) for ds in received} == {uid}
        sr = next(ds for ds in received if ds.Modality == "SR")
        referenced = {
            str(sop.ReferencedSOPInstanceUID)
            for ev in sr.CurrentRequestedProcedureEvidenceSequence
            for series in ev.ReferencedSeriesSequence
            for sop in series.ReferencedSOPSequence
        }
        sources = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}
        assert referenced and referenced <= sources
        assert "Traceback" not in proc.output()
    finally:
        proc.stop()
    assert not proc.alive()
