"""Turn a training checkpoint into a shipped fp16 weight file and record it in the manifest.

    python -m cxr_models.weights.export --name view --checkpoint runs/view/model_best.pt \
        --training-command "cxr train view --data data/train --out runs/view" \
        --data-seed 1 --data-studies 1200
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch

from cxr_models import __version__
from cxr_models.uid import name_uid
from cxr_models.weights import MANIFEST_NAME, MODEL_NAMES, default_weights_dir, sha256_of

logger = logging.getLogger(__name__)

DEMO_NOTICE = (
    "Demo weights trained on public real chest radiographs (NIH ChestX-ray14 with RSNA boxes, "
    "covid-chestxray-dataset with V7 Labs lung masks) and synthetic PhantomCXR radiographs. "
    "Not for clinical use."
)


def _empty_manifest() -> dict[str, Any]:
    return {
        "schema": 1,
        "version": f"{__version__}-demo",
        "demo": True,
        "notice": DEMO_NOTICE,
        "models": {},
    }


def read_or_create_manifest(weights_dir: Path) -> dict[str, Any]:
    path = weights_dir / MANIFEST_NAME
    if path.is_file():
        with path.open(encoding="utf-8") as fh:
            return json.load(fh)
    return _empty_manifest()


def write_manifest(weights_dir: Path, manifest: dict[str, Any]) -> Path:
    path = weights_dir / MANIFEST_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def fp16_state_dict(checkpoint: Path) -> dict[str, torch.Tensor]:
    """The model state dict of a trainer checkpoint (or a bare state dict), floats cast to fp16."""
    state = torch.load(checkpoint, map_location="cpu", weights_only=False)
    model_state = state["model"] if isinstance(state, dict) and "model" in state else state
    return {k: (v.half() if torch.is_floating_point(v) else v) for k, v in model_state.items()}


def export_model(
    *,
    name: str,
    checkpoint: Path,
    weights_dir: Path,
    info: dict[str, Any],
) -> dict[str, Any]:
    """Write ``<name>.pt`` (fp16) into ``weights_dir`` and its manifest entry; returns the entry."""
    if name not in MODEL_NAMES:
        raise ValueError(f"name must be one of {MODEL_NAMES}, got {name!r}")
    weights_dir.mkdir(parents=True, exist_ok=True)
    state = fp16_state_dict(checkpoint)
    target = weights_dir / f"{name}.pt"
    tmp = target.with_suffix(".pt.tmp")
    torch.save(state, tmp)
    os.replace(tmp, target)
    digest = sha256_of(target)
    manifest = read_or_create_manifest(weights_dir)
    entry = {
        **manifest["models"].get(name, {}),
        **info,
        "file": target.name,
        "sha256": digest,
        "bytes": target.stat().st_size,
        "parameters": int(sum(v.numel() for v in state.values() if torch.is_floating_point(v))),
        "dtype": "float16",
        "uid": name_uid("cxr-model", name, digest),
    }
    manifest["models"][name] = entry
    write_manifest(weights_dir, manifest)
    logger.info("exported %s (%d bytes, sha256 %s)", name, entry["bytes"], digest[:12])
    return entry


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Export a training checkpoint as shipped fp16 demo weights")
    parser.add_argument("--name", required=True, choices=MODEL_NAMES)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--weights-dir", type=Path, default=None, help="default: the package's weights folder")
    parser.add_argument("--training-command", required=True, help="the exact command that trained the checkpoint")
    parser.add_argument("--data-command", default=None, help="the exact command that generated the PhantomCXR training data")
    parser.add_argument("--data-seed", type=int, required=True, help="PhantomCXR seed of the training data")
    parser.add_argument("--data-studies", type=int, required=True)
    parser.add_argument(
        "--source", action="append", default=[], metavar="SPEC",
        help="a --data spec the checkpoint was trained on (repeat); its image count and licences are recorded",
    )
    parser.add_argument("--init-from", default=None, help="what the training started from (e.g. the PhantomCXR-only weights)")
    parser.add_argument("--manifest-version", default=None, help="set the weights set's version, e.g. 0.2.0-demo")
    parser.add_argument("--architecture", required=True)
    parser.add_argument("--input-size", type=int, nargs=2, required=True, metavar=("H", "W"))
    parser.add_argument("--classes", nargs="+", required=True)
    parser.add_argument("--model-version", default=__version__)
    parser.add_argument("--train-seconds", type=float, default=None)
    return parser


def describe_sources(specs: list[str]) -> list[dict[str, Any]]:
    """Each training source: spec, layout, sampling weight, image count and the licences of its images."""
    from collections import Counter

    from cxr_models.datasets import detect_format
    from cxr_models.datasets.sources import parse_source, read_sources

    described = []
    for spec in specs:
        source = parse_source(spec)
        records = read_sources([source])
        licences = Counter(r.licence or "not stated" for r in records)
        described.append({
            "spec": spec,
            "name": source.label,
            "format": source.format if source.format != "auto" else detect_format(source.root),
            "weight": source.weight,
            "images": len(records),
            "licences": dict(sorted(licences.items())),
        })
    return described


def main(args: argparse.Namespace) -> None:
    weights_dir = args.weights_dir or default_weights_dir()
    ckpt = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    info = {
        "version": args.model_version,
        "architecture": args.architecture,
        "input_size": list(args.input_size),
        "classes": list(args.classes),
        "training_command": args.training_command,
        "data": {
            "generator": "PhantomCXR",
            "command": args.data_command,
            "seed": args.data_seed,
            "n_studies": args.data_studies,
            "sources": describe_sources(args.source),
        },
        "init_from": args.init_from,
        "train_seconds": args.train_seconds,
        "validation_metrics": ckpt.get("metrics", {}) if isinstance(ckpt, dict) else {},
        "epochs": (ckpt.get("epoch") if isinstance(ckpt, dict) else None),
    }
    entry = export_model(name=args.name, checkpoint=args.checkpoint, weights_dir=weights_dir, info=info)
    if args.manifest_version is not None:
        manifest = read_or_create_manifest(weights_dir)
        manifest["version"] = args.manifest_version
        manifest["notice"] = DEMO_NOTICE
        write_manifest(weights_dir, manifest)
    print(json.dumps({args.name: {k: entry[k] for k in ("file", "bytes", "sha256", "uid")}}, indent=2))


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main(get_args_parser().parse_args())
