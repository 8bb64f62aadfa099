"""Shared fixtures of the model tests."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def phantom_small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny PhantomCXR dataset (8 studies, 256-320 px) shared by the trainer and inference tests."""
    from cxr_models.phantom.generate import generate_dataset

    root = tmp_path_factory.mktemp("phantom_small")
    return generate_dataset(root, n_studies=8, seed=123, size_range=(256, 320), other_fraction=0.15, workers=1)
