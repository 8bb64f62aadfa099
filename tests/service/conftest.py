"""Shared fixtures of the service tests: PhantomCXR studies as DICOM files."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest


def studies_in(root: Path) -> dict[str, list[Path]]:
    """StudyInstanceUID → its DICOM files, for a PhantomCXR dataset folder."""
    studies: dict[str, list[Path]] = {}
    for path in sorted((root / "train").rglob("*.dcm")):
        uid = str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)
        studies.setdefault(uid, []).append(path)
    return studies


@pytest.fixture(scope="session")
def phantom_studies(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Path]]:
    """Four small PhantomCXR chest studies (512-640 px, 1-3 images each)."""
    from cxr_models.phantom.generate import generate_dataset

    root = generate_dataset(tmp_path_factory.mktemp("phantom_service"), n_studies=4, seed=4242, size_range=(512, 640), other_fraction=0.0, workers=1)
    return studies_in(root)


@pytest.fixture(scope="session")
def large_study(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, list[Path]]:
    """One study of large images (2048-2560 px): its analysis takes seconds on a CPU, long
    enough to kill a worker in the middle of it."""
    from cxr_models.phantom.generate import generate_dataset

    root = generate_dataset(tmp_path_factory.mktemp("phantom_large"), n_studies=3, seed=77, size_range=(2048, 2560), other_fraction=0.0, workers=1)
    studies = studies_in(root)
    uid = max(studies, key=lambda u: len(studies[u]))
    return uid, studies[uid]


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory, phantom_studies: dict[str, list[Path]]):
    """A real Orthanc (one per test module) that already holds the small PhantomCXR studies."""
    from tests.service.procs import start_orthanc

    server = start_orthanc(tmp_path_factory.mktemp("orthanc"))
    server.upload([p for paths in phantom_studies.values() for p in paths])
    yield server
    server.stop()
