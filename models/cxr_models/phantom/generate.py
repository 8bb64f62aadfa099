"""Write a PhantomCXR dataset in the SIIM-FISABIO-RSNA layout (plus images.csv, masks and phantom.json).

``python -m cxr_models.phantom.generate --out DIR --n-studies N --seed S``::

    OUT/train/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm
    OUT/train_image_level.csv   one row per frontal chest image (SIIM format)
    OUT/train_study_level.csv   one row per chest study (one-hot category)
    OUT/masks/<SOP>_lung.png, OUT/masks/<SOP>_opacity.png   frontal chest images, 0/255
    OUT/images.csv              every image, with view, geometry and opacity percentage
    OUT/phantom.json            generator version and arguments

The output is a function of (seed, n_studies, arguments): studies render independently in
worker processes and the rows are written in study order, so ``--workers`` never changes it.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import multiprocessing
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from cxr_models.phantom.dicom_io import write_dicom
from cxr_models.phantom.study import (
    DEFAULT_RENDER_MAX_SIDE,
    DEFAULT_SIZE_RANGE,
    GENERATOR_VERSION,
    PhantomStudy,
    render_study,
    validate_arguments,
)
from cxr_models.records import SIIM_STUDY_COLUMNS, STUDY_LABELS, Box

logger = logging.getLogger(__name__)

IMAGE_LEVEL_CSV = "train_image_level.csv"
STUDY_LEVEL_CSV = "train_study_level.csv"
CATALOGUE_CSV = "images.csv"
MANIFEST = "phantom.json"
CATALOGUE_COLUMNS: tuple[str, ...] = (
    "sop_instance_uid", "study_instance_uid", "series_instance_uid", "path", "view", "view_position",
    "body_part_examined", "rows", "columns", "pixel_spacing_mm", "photometric_interpretation", "bits_stored",
    "opacity_percent", "study_label", "lesion_kinds",
)


@dataclass(frozen=True)
class _Job:
    out: Path
    seed: int
    study_index: int
    size_range: tuple[int, int]
    other_fraction: float
    render_max_side: int


@dataclass(frozen=True)
class _StudyRows:
    label: str | None
    study_id: str
    image_level: tuple[dict[str, str], ...]
    catalogue: tuple[dict[str, str], ...]
    views: tuple[str, ...]


def _number(value: float) -> str:
    return f"{value:.1f}" if float(value).is_integer() else f"{value:.4f}"


def siim_boxes(boxes: tuple[Box, ...]) -> str:
    """The ``boxes`` cell: a Python literal list of x/y/width/height dicts, or empty."""
    if not boxes:
        return ""
    return repr([{"x": b.x0, "y": b.y0, "width": b.width, "height": b.height} for b in boxes])


def siim_label(boxes: tuple[Box, ...]) -> str:
    """The ``label`` cell: ``opacity 1 x0 y0 x1 y1`` per box, or ``none 1 0 0 1 1``."""
    if not boxes:
        return "none 1 0 0 1 1"
    return " ".join("opacity 1 " + " ".join(_number(v) for v in b.as_list()) for b in boxes)


def _save_mask(path: Path, mask: np.ndarray) -> None:
    Image.fromarray(mask.astype(np.uint8) * 255).save(path, compress_level=1)


def _write_study(study: PhantomStudy, out: Path) -> _StudyRows:
    image_level: list[dict[str, str]] = []
    catalogue: list[dict[str, str]] = []
    for image in study.images:
        relative = Path("train") / study.study_instance_uid / image.series_instance_uid / f"{image.sop_instance_uid}.dcm"
        write_dicom(out / relative, study, image)
        acq = image.acquisition
        if image.view == "frontal" and study.label is not None:
            lung, opacity = image.lung_mask, image.opacity_mask
            if lung is None or opacity is None:
                raise ValueError(f"frontal image {image.sop_instance_uid} has no ground-truth masks")
            _save_mask(out / "masks" / f"{image.sop_instance_uid}_lung.png", lung)
            _save_mask(out / "masks" / f"{image.sop_instance_uid}_opacity.png", opacity)
            image_level.append({
                "id": f"{image.sop_instance_uid}_image",
                "boxes": siim_boxes(image.boxes),
                "label": siim_label(image.boxes),
                "StudyInstanceUID": study.study_instance_uid,
            })
        catalogue.append({
            "sop_instance_uid": image.sop_instance_uid,
            "study_instance_uid": study.study_instance_uid,
            "series_instance_uid": image.series_instance_uid,
            "path": relative.as_posix(),
            "view": image.view,
            "view_position": acq.view_position,
            "body_part_examined": acq.body_part,
            "rows": str(image.pixels.shape[0]),
            "columns": str(image.pixels.shape[1]),
            "pixel_spacing_mm": f"{acq.pixel_spacing:.6f}",
            "photometric_interpretation": acq.photometric,
            "bits_stored": str(acq.bits_stored),
            "opacity_percent": "" if image.opacity_percent is None else f"{image.opacity_percent:.4f}",
            "study_label": study.label or "",
            "lesion_kinds": ";".join(study.lesion_kinds),
        })
    return _StudyRows(label=study.label, study_id=study.study_instance_uid, image_level=tuple(image_level),
                      catalogue=tuple(catalogue), views=tuple(image.view for image in study.images))


def _run(job: _Job) -> _StudyRows:
    study = render_study(seed=job.seed, study_index=job.study_index, size_range=job.size_range,
                         other_fraction=job.other_fraction, render_max_side=job.render_max_side)
    return _write_study(study, job.out)


def _write_csv(path: Path, columns: tuple[str, ...], rows: list[dict[str, str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def generate_dataset(
    out: Path,
    *,
    n_studies: int,
    seed: int,
    size_range: tuple[int, int] = DEFAULT_SIZE_RANGE,
    other_fraction: float = 0.1,
    workers: int | None = None,
    render_max_side: int = DEFAULT_RENDER_MAX_SIDE,
    progress: bool = False,
) -> Path:
    """Render ``n_studies`` studies into the empty (or new) folder ``out``; returns ``out``."""
    out = Path(out)
    if n_studies < 1:
        raise ValueError(f"n_studies must be >= 1, got {n_studies}")
    if workers is not None and workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    size_range = (int(size_range[0]), int(size_range[1]))
    validate_arguments(size_range=size_range, other_fraction=other_fraction, render_max_side=render_max_side)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"out must be an empty or new folder, {out} is not empty")
    (out / "train").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    jobs = [_Job(out, seed, index, size_range, other_fraction, render_max_side) for index in range(n_studies)]
    count = min(workers or os.cpu_count() or 1, n_studies)
    bar = tqdm(total=n_studies, desc="phantom", disable=not progress, dynamic_ncols=True, leave=False)
    results: list[_StudyRows] = []
    if count == 1:
        for job in jobs:
            results.append(_run(job))
            bar.update(1)
    else:
        # a fork server imports the renderer once and forks clean workers: fast start-up, and no
        # threads inherited from the caller (torch, BLAS)
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["cxr_models.phantom.generate"])
        with context.Pool(count) as pool:
            for rows in pool.imap(_run, jobs, chunksize=1):
                results.append(rows)
                bar.update(1)
    bar.close()

    image_level = [row for r in results for row in r.image_level]
    catalogue = [row for r in results for row in r.catalogue]
    study_level = [
        {"id": f"{r.study_id}_study", **{col: str(int(r.label == lab)) for col, lab in zip(SIIM_STUDY_COLUMNS,
                                                                                        STUDY_LABELS, strict=True)}}
        for r in results
        if r.label is not None
    ]
    _write_csv(out / IMAGE_LEVEL_CSV, ("id", "boxes", "label", "StudyInstanceUID"), image_level)
    _write_csv(out / STUDY_LEVEL_CSV, ("id", *SIIM_STUDY_COLUMNS), study_level)
    _write_csv(out / CATALOGUE_CSV, CATALOGUE_COLUMNS, catalogue)
    labels = Counter(r.label or "other" for r in results)
    views = Counter(view for r in results for view in r.views)
    manifest = {
        "generator": "PhantomCXR",
        "version": GENERATOR_VERSION,
        "seed": seed,
        "n_studies": n_studies,
        "arguments": {"size_range": list(size_range), "other_fraction": other_fraction,
                      "render_max_side": render_max_side},
        "n_images": len(catalogue),
        "studies": dict(sorted(labels.items())),
        "views": dict(sorted(views.items())),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    logger.info("PhantomCXR: %d studies, %d images in %s", n_studies, len(catalogue), out)
    return out


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Generate a PhantomCXR dataset (synthetic chest radiographs)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (new or empty)")
    parser.add_argument("--n-studies", type=int, required=True, help="number of studies")
    parser.add_argument("--seed", type=int, default=0, help="dataset seed")
    parser.add_argument("--size-range", type=int, nargs=2, metavar=("MIN", "MAX"), default=list(DEFAULT_SIZE_RANGE),
                        help="image side length range in pixels")
    parser.add_argument("--other-fraction", type=float, default=0.1, help="fraction of non-chest studies")
    parser.add_argument("--render-max-side", type=int, default=DEFAULT_RENDER_MAX_SIDE,
                        help="anatomy is projected at most this many pixels per side, then resized")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: all cores)")
    parser.add_argument("--no-progress", action="store_true", help="disable the progress bar")
    return parser


def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    out = generate_dataset(args.out, n_studies=args.n_studies, seed=args.seed, size_range=tuple(args.size_range),
                           other_fraction=args.other_fraction, workers=args.workers,
                           render_max_side=args.render_max_side, progress=not args.no_progress)
    manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    print(f"wrote {manifest['n_images']} images of {manifest['n_studies']} studies to {out}")
    print(f"studies: {manifest['studies']}  views: {manifest['views']}")


if __name__ == "__main__":
    main(get_args_parser().parse_args())
