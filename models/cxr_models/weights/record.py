"""Record measured metrics in the weights manifest.

    python -m cxr_models.weights.record --metrics runs/eval/metrics.json \
        --command "cxr evaluate --data data/test --out runs/eval" --data-seed 9001

    python -m cxr_models.weights.record --key metrics_real --metrics runs/eval_real/metrics.json \
        --command "cxr evaluate --data ../shared/realcxr/chestxray14 --split val --out runs/eval_real"

Each model entry gets the metrics that measure it under ``--key`` (default ``metrics``: the
synthetic PhantomCXR test set); the manifest gets the whole evaluation under ``evaluation`` (for
``--key metrics``) or ``evaluation_<suffix>`` (for ``--key metrics_<suffix>``, e.g.
``evaluation_real``), so measurements on real validation data sit beside the synthetic ones and
never replace them. The evaluation block records the data sources and split the metrics.json
names (``cxr evaluate`` writes them under ``"data"``).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from cxr_models.weights import default_weights_dir
from cxr_models.weights.export import read_or_create_manifest, write_manifest

DEFAULT_KEY = "metrics"
_KEY_PATTERN = re.compile(r"metrics(_[a-z0-9]+)*")

# Which metrics.json keys describe which shipped model.
MODEL_METRICS: dict[str, tuple[str, ...]] = {
    "view": ("view_accuracy", "view_accuracy_frontal", "view_accuracy_lateral"),
    "lungs": ("lung_dice", "lung_iou"),
    "detector_a": ("opacity_map50_detector_a",),
    "detector_b": ("opacity_map50_detector_b",),
    "opacity": ("opacity_percent_mae", "opacity_dice", "opacity_percent_spearman"),
    "study": ("study_map", "study_macro_auc", "study_accuracy", "normal_abnormal_auc"),
}
ENSEMBLE_METRICS: tuple[str, ...] = (
    "opacity_map50",
    "opacity_map50_no_crop",
    "none_ap",
    "siim_map",
    "false_boxes_per_negative",
    "opacity_recall_at_reporting_threshold",
    "reporting_threshold",
    "analysed_rate",
)


def evaluation_key(key: str) -> str:
    """Manifest key of the evaluation block recorded under the per-model ``key``."""
    if not _KEY_PATTERN.fullmatch(key):
        raise ValueError(f"key must be 'metrics' or 'metrics_<suffix>' (lower case), got {key!r}")
    return "evaluation" + key[len("metrics"):]


def _data_block(metrics: dict[str, Any], *, data_seed: int | None, data_command: str | None) -> dict[str, Any]:
    """Where the measured images came from: the PhantomCXR seed, and the sources and split metrics.json names."""
    block: dict[str, Any] = {}
    if data_seed is not None:
        block.update({"generator": "PhantomCXR", "seed": data_seed, "command": data_command})
    elif data_command is not None:
        block["command"] = data_command
    data = metrics.get("data")
    if isinstance(data, dict):
        sources = data.get("sources")
        if isinstance(sources, list):
            block["sources"] = [s.get("spec") if isinstance(s, dict) else s for s in sources]
        elif data.get("root") is not None:
            block["sources"] = [data["root"]]
        if "split" in data:
            block["split"] = {k: data.get(k) for k in ("split", "val_fraction", "split_seed")}
    return block


def record_evaluation(
    *,
    weights_dir: Path,
    metrics: dict[str, Any],
    command: str,
    data_seed: int | None,
    data_command: str | None,
    key: str = DEFAULT_KEY,
) -> dict[str, Any]:
    """Write the per-model metrics under ``key`` and the evaluation block beside the others."""
    block_key = evaluation_key(key)
    manifest = read_or_create_manifest(weights_dir)
    for name, keys in MODEL_METRICS.items():
        if name in manifest["models"]:
            manifest["models"][name][key] = {k: metrics.get(k) for k in keys}
    manifest[block_key] = {
        "command": command,
        "data": _data_block(metrics, data_seed=data_seed, data_command=data_command),
        "ensemble": {k: metrics.get(k) for k in ENSEMBLE_METRICS},
        "metrics": metrics,
    }
    write_manifest(weights_dir, manifest)
    return manifest


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Record measured metrics in the weights manifest")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics.json written by cxr evaluate")
    parser.add_argument("--command", required=True, help="the exact cxr evaluate command")
    parser.add_argument(
        "--key", default=DEFAULT_KEY,
        help="per-model key to record under: metrics (synthetic test set, default) or metrics_<suffix>, "
        "e.g. metrics_real for real validation data (evaluation block: evaluation_<suffix>)",
    )
    parser.add_argument(
        "--data-seed", type=int, default=None,
        help="PhantomCXR seed of the test set (required for --key metrics)",
    )
    parser.add_argument("--data-command", default=None, help="the exact command that generated the test set")
    parser.add_argument("--weights-dir", type=Path, default=None)
    return parser


def main(args: argparse.Namespace) -> None:
    evaluation_key(args.key)
    if args.key == DEFAULT_KEY and args.data_seed is None:
        raise SystemExit("--data-seed is required when recording the synthetic test-set metrics (--key metrics)")
    metrics = json.loads(args.metrics.read_text(encoding="utf-8"))
    record_evaluation(
        weights_dir=args.weights_dir or default_weights_dir(),
        metrics=metrics,
        command=args.command,
        data_seed=args.data_seed,
        data_command=args.data_command,
        key=args.key,
    )


if __name__ == "__main__":
    main(get_args_parser().parse_args())
