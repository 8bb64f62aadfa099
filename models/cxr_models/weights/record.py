"""Record measured test-set metrics in the weights manifest.

    python -m cxr_models.weights.record --metrics runs/eval/metrics.json \
        --command "cxr evaluate --data data/test --out runs/eval" --data-seed 9001

Each model entry gets the metrics that measure it; the manifest gets the whole evaluation.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cxr_models.weights import default_weights_dir
from cxr_models.weights.export import read_or_create_manifest, write_manifest

# Which metrics.json keys describe which shipped model.
MODEL_METRICS: dict[str, tuple[str, ...]] = {
    "view": ("view_accuracy",),
    "lungs": ("lung_dice", "lung_iou"),
    "detector_a": ("opacity_map50_detector_a",),
    "detector_b": ("opacity_map50_detector_b",),
    "opacity": ("opacity_percent_mae", "opacity_dice"),
    "study": ("study_map", "study_macro_auc", "study_accuracy"),
}
ENSEMBLE_METRICS: tuple[str, ...] = ("opacity_map50", "opacity_map50_no_crop", "none_ap", "siim_map")


def record_evaluation(
    *, weights_dir: Path, metrics: dict[str, Any], command: str, data_seed: int, data_command: str | None
) -> dict[str, Any]:
    manifest = read_or_create_manifest(weights_dir)
    for name, keys in MODEL_METRICS.items():
        if name in manifest["models"]:
            manifest["models"][name]["metrics"] = {k: metrics.get(k) for k in keys}
    manifest["evaluation"] = {
        "command": command,
        "data": {"generator": "PhantomCXR", "seed": data_seed, "command": data_command},
        "ensemble": {k: metrics.get(k) for k in ENSEMBLE_METRICS},
        "metrics": metrics,
    }
    write_manifest(weights_dir, manifest)
    return manifest


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Record test-set metrics in the weights manifest")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics.json written by cxr evaluate")
    parser.add_argument("--command", required=True, help="the exact cxr evaluate command")
    parser.add_argument("--data-seed", type=int, required=True, help="PhantomCXR seed of the test set")
    parser.add_argument("--data-command", default=None, help="the exact command that generated the test set")
    parser.add_argument("--weights-dir", type=Path, default=None)
    return parser


def main(args: argparse.Namespace) -> None:
    metrics = json.loads(args.metrics.read_text(encoding="utf-8"))
    record_evaluation(
        weights_dir=args.weights_dir or default_weights_dir(),
        metrics=metrics,
        command=args.command,
        data_seed=args.data_seed,
        data_command=args.data_command,
    )


if __name__ == "__main__":
    main(get_args_parser().parse_args())
