"""Shipped demo weights and their manifest.

``manifest.json`` beside this file records, for each model: file, sha256, size, version, UID,
architecture, input size, classes, the exact training command, the data seeds and the measured
metrics. Weight files are fp16 state dicts; :func:`load_state_dict` verifies the sha256 and
returns float32 tensors.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

MANIFEST_NAME = "manifest.json"
MODEL_NAMES: tuple[str, ...] = ("view", "lungs", "detector_a", "detector_b", "opacity", "study")


class WeightsError(RuntimeError):
    """The weights folder or a weight file is missing, incomplete or corrupt."""


def default_weights_dir() -> Path:
    return Path(__file__).resolve().parent


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def load_manifest(weights_dir: Path | None = None) -> dict[str, Any]:
    """The manifest of ``weights_dir`` (default: the shipped weights)."""
    folder = default_weights_dir() if weights_dir is None else Path(weights_dir)
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise WeightsError(f"no {MANIFEST_NAME} in weights_dir {folder}")
    with path.open(encoding="utf-8") as fh:
        manifest = json.load(fh)
    if not isinstance(manifest.get("models"), dict):
        raise WeightsError(f"{path} has no 'models' mapping")
    return manifest


def load_state_dict(name: str, *, weights_dir: Path | None = None, manifest: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """The float32 state dict of model ``name``, after checking its sha256 against the manifest."""
    folder = default_weights_dir() if weights_dir is None else Path(weights_dir)
    manifest = load_manifest(folder) if manifest is None else manifest
    entry = manifest["models"].get(name)
    if entry is None:
        raise WeightsError(f"model name {name!r} is not in the manifest of {folder} (has {sorted(manifest['models'])})")
    path = folder / entry["file"]
    if not path.is_file():
        raise WeightsError(f"weight file {path} for model {name!r} is missing")
    actual = sha256_of(path)
    if actual != entry["sha256"]:
        raise WeightsError(f"weight file {path} has sha256 {actual}, manifest says {entry['sha256']}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: (v.float() if torch.is_floating_point(v) else v) for k, v in state.items()}
