"""The Storage SCP in-process (no models): an instance with a missing or invalid UID gets a
failure status with its reason and nothing of it is spooled; a valid one is spooled under its
study and patient, and two patients' instances under one StudyInstanceUID are two studies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ComputedRadiographyImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE

from cxr_service.dimse import STATUS_DATASET_DOES_NOT_MATCH, STATUS_SUCCESS, SpooledStudy, StorageSCP, spool_folder_name

# The invalid UIDs are set on purpose; pydicom warns about each.
pytestmark = pytest.mark.filterwarnings("ignore:Invalid value for VR:UserWarning")


def instance(**uids: str) -> pydicom.Dataset:
    ds = pydicom.Dataset()
    ds.SOPClassUID = ComputedRadiographyImageStorage
    ds.SOPInstanceUID = uids.get("sop", generate_uid())
    ds.StudyInstanceUID = uids.get("study", generate_uid())
    ds.SeriesInstanceUID = uids.get("series", generate_uid())
    ds.Modality = "CR"
    if "patient" in uids:
        ds.PatientID = uids["patient"]
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = np.zeros((8, 8), dtype=np.uint16).tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


@pytest.fixture
def closed() -> list[SpooledStudy]:
    return []


@pytest.fixture
def scp(tmp_path: Path, closed: list[SpooledStudy]):
    server = StorageSCP(ae_title="CXR", spool_dir=tmp_path / "spool", idle_s=3600, on_study_closed=closed.append)
    port = server.start(host="127.0.0.1", port=0)
    yield server, port
    server.stop()


def c_store(ds: pydicom.Dataset, port: int) -> tuple[int, str]:
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(ComputedRadiographyImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", port, ae_title="CXR")
    assert assoc.is_established
    try:
        status = assoc.send_c_store(ds)
        return int(status.Status), str(status.get("ErrorComment", ""))
    finally:
        assoc.release()


@pytest.mark.parametrize(
    ("uids", "comment"),
    [
        ({"study": "1.2.03.4"}, "invalid StudyInstanceUID: component 3 has a leading zero (03)"),
        ({"sop": "1.2.3.4.05"}, "invalid SOPInstanceUID: component 5 has a leading zero (05)"),
        ({"series": "1.2.x"}, "invalid SeriesInstanceUID: component 3 is not all digits"),
        ({"study": "../../../../escaped"}, "invalid StudyInstanceUID: component 1 is empty"),
    ],
)
def test_invalid_uids_get_a_failure_status_and_nothing_is_spooled(scp, tmp_path: Path, uids: dict[str, str], comment: str) -> None:
    server, port = scp
    assert c_store(instance(**uids), port) == (STATUS_DATASET_DOES_NOT_MATCH, comment)
    assert not [p for p in (tmp_path / "spool").rglob("*") if p.is_file()]
    assert server.pending_studies() == []
    # The server keeps serving: a valid instance is spooled under its study.
    good = instance()
    assert c_store(good, port)[0] == STATUS_SUCCESS
    assert (tmp_path / "spool" / spool_folder_name(good.StudyInstanceUID, "") / f"{good.SOPInstanceUID}.dcm").is_file()
    assert server.pending_studies() == [good.StudyInstanceUID]


def test_two_patients_under_one_study_uid_are_spooled_and_closed_apart(scp, closed: list[SpooledStudy], tmp_path: Path) -> None:
    server, port = scp
    study = generate_uid()
    sent = {patient: [instance(study=study, patient=patient) for _ in range(n)] for patient, n in (("PID-A", 2), ("PID-B", 1))}
    for datasets in sent.values():
        for ds in datasets:
            assert c_store(ds, port)[0] == STATUS_SUCCESS
    assert server.pending_studies() == [study, study]
    assert server.close_idle_studies(now=float("inf")) == [study, study]
    assert server.pending_studies() == []
    by_patient = {s.patient_id: s for s in closed}
    assert sorted(by_patient) == ["PID-A", "PID-B"] and all(s.study_instance_uid == study for s in closed)
    for patient, datasets in sent.items():
        folder = by_patient[patient].folder
        assert folder == tmp_path / "spool" / spool_folder_name(study, patient)
        assert "PID" not in folder.name, "no patient data in the spool's names"
        assert sorted(p.name for p in folder.iterdir()) == sorted(f"{ds.SOPInstanceUID}.dcm" for ds in datasets)
