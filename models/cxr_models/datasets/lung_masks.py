"""Reader for image + lung-mask folders (Montgomery, Shenzhen, JSRT and generic copies).

Variants, detected from the folders present:

``montgomery``
    ``ROOT/CXR_png/<name>.png`` with ``ROOT/ManualMask/leftMask/<name>.png`` and
    ``ROOT/ManualMask/rightMask/<name>.png``; the lung mask is the union of both.
``shenzhen``
    ``ROOT/CXR_png/<name>.png`` with ``ROOT/mask/<name>_mask.png`` (``masks/`` and
    ``<name>.png`` are accepted too, which also reads the combined Kaggle Montgomery+Shenzhen copy).
``generic`` (JSRT and others)
    ``ROOT/images/<name>.(png|jpg|jpeg)`` with ``ROOT/masks/<name>.png`` (or ``_mask.png``/``.gif``),
    or ``ROOT/masks/left/<name>.png`` + ``ROOT/masks/right/<name>.png``.

All images are frontal; each image is its own study. Images without a complete mask (one lung
only, or none) are skipped with a warning: a half mask would teach the segmenter to miss a lung.
"""

from __future__ import annotations

import logging
from pathlib import Path

from cxr_models.records import ImageRecord

logger = logging.getLogger(__name__)

VARIANTS: tuple[str, ...] = ("montgomery", "shenzhen", "generic")
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")
_MASK_SUFFIXES: tuple[str, ...] = (".png", ".gif")


def lung_mask_variant(root: Path) -> str | None:
    """The layout variant found under ``root``, or None when none is present."""
    root = Path(root)
    if (root / "CXR_png").is_dir():
        if (root / "ManualMask" / "leftMask").is_dir() and (root / "ManualMask" / "rightMask").is_dir():
            return "montgomery"
        if (root / "mask").is_dir() or (root / "masks").is_dir():
            return "shenzhen"
        return None
    if (root / "images").is_dir() and (root / "masks").is_dir():
        return "generic"
    return None


def _images(folder: Path) -> dict[str, Path]:
    """Image stem -> path for the image files directly in ``folder``."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.stem in found:
            logger.warning("%s: %s and %s share a name; keeping the first", folder, found[path.stem].name, path.name)
            continue
        found[path.stem] = path
    return found


def _first_existing(folder: Path, names: list[str]) -> Path | None:
    for name in names:
        candidate = folder / name
        if candidate.is_file():
            return candidate
    return None


def _mask_names(stem: str, *, with_mask_suffix: bool) -> list[str]:
    names = [f"{stem}{suffix}" for suffix in _MASK_SUFFIXES]
    if with_mask_suffix:
        names = [f"{stem}_mask{suffix}" for suffix in _MASK_SUFFIXES] + names
    return names


def _left_right(left: Path, right: Path, stem: str) -> tuple[Path, ...] | None:
    pair = (
        _first_existing(left, _mask_names(stem, with_mask_suffix=False)),
        _first_existing(right, _mask_names(stem, with_mask_suffix=False)),
    )
    if pair[0] is None or pair[1] is None:
        return None
    return (pair[0], pair[1])


def _mask_for(root: Path, variant: str, stem: str) -> tuple[Path, ...] | None:
    if variant == "montgomery":
        return _left_right(root / "ManualMask" / "leftMask", root / "ManualMask" / "rightMask", stem)
    if variant == "shenzhen":
        for folder in (root / "mask", root / "masks"):
            found = _first_existing(folder, _mask_names(stem, with_mask_suffix=True))
            if found is not None:
                return (found,)
        return None
    masks = root / "masks"
    found = _first_existing(masks, _mask_names(stem, with_mask_suffix=True))
    if found is not None:
        return (found,)
    return _left_right(masks / "left", masks / "right", stem)


def read_lung_masks(root: Path, *, variant: str = "auto") -> list[ImageRecord]:
    """Records with ``lung_mask`` set for every image that has a complete mask, sorted by name."""
    root = Path(root)
    if variant == "auto":
        detected = lung_mask_variant(root)
        if detected is None:
            raise ValueError(
                f"root {root} has no lung-mask layout: looked for CXR_png/ with ManualMask/leftMask+rightMask/ "
                "(Montgomery) or mask/ (Shenzhen), and for images/ with masks/ (JSRT/generic)"
            )
        variant = detected
    elif variant not in VARIANTS:
        raise ValueError(f"variant must be 'auto' or one of {VARIANTS}, got {variant!r}")
    image_dir = root / ("images" if variant == "generic" else "CXR_png")
    if not image_dir.is_dir():
        raise ValueError(f"root {root} has no {image_dir.name}/ folder for lung-mask variant {variant!r}")

    records: list[ImageRecord] = []
    unmasked: list[str] = []
    for stem, path in _images(image_dir).items():
        mask = _mask_for(root, variant, stem)
        if mask is None:
            unmasked.append(stem)
            continue
        records.append(ImageRecord(image_id=stem, path=path, study_id=stem, view="frontal", lung_mask=mask))
    if unmasked:
        logger.warning(
            "%s: skipped %d image(s) without a complete lung mask (e.g. %s)", root, len(unmasked), unmasked[:3]
        )
    logger.info("%s: %d %s image(s) with lung masks", root, len(records), variant)
    return records
