"""Shipped demo weights and their manifest.

``manifest.json`` beside this file records, for each model: file, sha256, size, version, UID,
architecture, input size, classes, the exact training command, the data seeds and the measured
metrics. Weight files are fp16 state dicts; :func:`load_state_dict` verifies the sha256 and
returns float32 tensors.

Optional top-level manifest keys read by the pipeline and the service:

``"ood"``
    The out-of-distribution Gaussian (:mod:`cxr_models.inference.ood`): ``file`` (``ood.pt``),
    ``sha256``, ``features``, ``threshold``, ``threshold_rule``, ``fitted_on``, ``command``,
    written by ``python -m cxr_models.evaluation.fit_ood --write-manifest``;
    :func:`load_ood_state` verifies and loads it. Without it no OOD score is computed.
``"crop_fallback"``
    ``true``: an image whose lung mask is implausible is analysed on the whole image (the old
    behaviour); default ``false``: it is not analysed (:func:`crop_fallback_enabled`).
``"reporting_threshold"``
    ``{"score": s, ...}``: the lowest fused opacity score reported, chosen by a tuner on
    validation data (:func:`reporting_threshold`); the service's own setting overrides it.
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
OOD_KEY = "ood"
CROP_FALLBACK_KEY = "crop_fallback"
REPORTING_THRESHOLD_KEY = "reporting_threshold"


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


def verified_file(folder: Path, entry: dict[str, Any], *, what: str) -> Path:
    """The file of a manifest ``entry`` in ``folder``, after checking it exists and its sha256."""
    path = folder / entry["file"]
    if not path.is_file():
        raise WeightsError(f"weight file {path} for {what} is missing")
    actual = sha256_of(path)
    if actual != entry["sha256"]:
        raise WeightsError(f"weight file {path} has sha256 {actual}, manifest says {entry['sha256']}")
    return path


def load_state_dict(name: str, *, weights_dir: Path | None = None, manifest: dict[str, Any] | None = None) -> dict[str, torch.Tensor]:
    """The float32 state dict of model ``name``, after checking its sha256 against the manifest."""
    folder = default_weights_dir() if weights_dir is None else Path(weights_dir)
    manifest = load_manifest(folder) if manifest is None else manifest
    entry = manifest["models"].get(name)
    if entry is None:
        raise WeightsError(f"model name {name!r} is not in the manifest of {folder} (has {sorted(manifest['models'])})")
    path = verified_file(folder, entry, what=f"model {name!r}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {k: (v.float() if torch.is_floating_point(v) else v) for k, v in state.items()}


def load_ood_state(
    *, weights_dir: Path | None = None, manifest: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The manifest's ``"ood"`` entry and the contents of its file (sha256 checked), or None
    when the manifest has no ``"ood"`` entry."""
    folder = default_weights_dir() if weights_dir is None else Path(weights_dir)
    manifest = load_manifest(folder) if manifest is None else manifest
    entry = manifest.get(OOD_KEY)
    if entry is None:
        return None
    if not isinstance(entry, dict) or "file" not in entry or "sha256" not in entry:
        raise WeightsError(f"manifest {OOD_KEY!r} entry of {folder} must be a mapping with 'file' and 'sha256'")
    path = verified_file(folder, entry, what=f"manifest entry {OOD_KEY!r}")
    return entry, torch.load(path, map_location="cpu", weights_only=True)


def crop_fallback_enabled(manifest: dict[str, Any]) -> bool:
    """Whether the manifest enables the whole-image fallback for implausible lung masks (default off)."""
    value = manifest.get(CROP_FALLBACK_KEY, False)
    if not isinstance(value, bool):
        raise WeightsError(f"manifest {CROP_FALLBACK_KEY!r} must be true or false, got {value!r}")
    return value


def reporting_threshold(manifest: dict[str, Any]) -> float | None:
    """The manifest's ``"reporting_threshold"`` score, or None when it has none."""
    entry = manifest.get(REPORTING_THRESHOLD_KEY)
    if entry is None:
        return None
    score = entry.get("score") if isinstance(entry, dict) else None
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not 0.0 <= float(score) <= 1.0:
        raise WeightsError(f"manifest {REPORTING_THRESHOLD_KEY!r} must be {{\"score\": s}} with s in [0, 1], got {entry!r}")
    return float(score)
