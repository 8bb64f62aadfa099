"""Dataset readers: every supported on-disk layout becomes a sorted ``list[ImageRecord]``.

``read_dataset(root, format="auto")`` picks the reader from marker files:

=========== =========================================================================
siim        ``train_image_level.csv`` (SIIM-FISABIO-RSNA COVID-19, and PhantomCXR)
rsna        ``stage_2_train_labels.csv`` (RSNA Pneumonia Detection)
chestxray14 ``Data_Entry_2017_v2020.csv`` or ``Data_Entry_2017.csv`` (NIH ChestX-ray14,
            with optional RSNA Pneumonia boxes matched onto it)
covidcxr    ``metadata.csv`` with patientid/finding/view/modality/filename columns
            (ieee8023 COVID-19 image data collection)
padchest    the PadChest label CSV (official name, or the only CSV with its columns)
lungmasks   ``CXR_png/`` + ``ManualMask/`` or ``mask/`` (Montgomery, Shenzhen), or
            ``images/`` + ``masks/`` (JSRT, generic)
=========== =========================================================================

``load_image``/``load_lung_mask``/``load_opacity_mask`` read a record's pixels the same way
training and inference do (:mod:`cxr_models.imaging`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from cxr_models.datasets.chestxray14 import DATA_ENTRY_NAMES as CHESTXRAY14_CSVS
from cxr_models.datasets.chestxray14 import find_data_entry, read_chestxray14
from cxr_models.datasets.covid_cxr import METADATA_CSV as COVID_CSV
from cxr_models.datasets.covid_cxr import is_covid_cxr, read_covid_cxr
from cxr_models.datasets.csvio import header
from cxr_models.datasets.lung_masks import lung_mask_variant, read_lung_masks
from cxr_models.datasets.padchest import DEFAULT_CSV as PADCHEST_CSV
from cxr_models.datasets.padchest import REQUIRED_COLUMNS as PADCHEST_COLUMNS
from cxr_models.datasets.padchest import read_padchest
from cxr_models.datasets.rsna_pneumonia import LABELS_CSV as RSNA_CSV
from cxr_models.datasets.rsna_pneumonia import read_rsna_pneumonia
from cxr_models.datasets.siim import IMAGE_LEVEL_CSV as SIIM_CSV
from cxr_models.datasets.siim import read_siim, read_siim_unlabelled
from cxr_models.imaging import read_image_display, read_mask
from cxr_models.records import ImageRecord

logger = logging.getLogger(__name__)

FORMATS: tuple[str, ...] = ("siim", "rsna", "chestxray14", "covidcxr", "padchest", "lungmasks")

__all__ = [
    "FORMATS",
    "detect_format",
    "load_image",
    "load_lung_mask",
    "load_opacity_mask",
    "read_chestxray14",
    "read_covid_cxr",
    "read_dataset",
    "read_lung_masks",
    "read_padchest",
    "read_rsna_pneumonia",
    "read_siim",
    "read_siim_unlabelled",
]


def _is_padchest(root: Path) -> bool:
    if (root / PADCHEST_CSV).is_file():
        return True
    candidates = [p for p in root.glob("*.csv") if p.is_file()]
    return len(candidates) == 1 and all(column in header(candidates[0]) for column in PADCHEST_COLUMNS)


def detect_format(root: Path) -> str:
    """The format of the dataset at ``root`` (first match in :data:`FORMATS` order)."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"dataset root {root} is not a directory")
    if (root / SIIM_CSV).is_file():
        return "siim"
    if (root / RSNA_CSV).is_file():
        return "rsna"
    if find_data_entry(root) is not None:
        return "chestxray14"
    if is_covid_cxr(root):
        return "covidcxr"
    if _is_padchest(root):
        return "padchest"
    if lung_mask_variant(root) is not None:
        return "lungmasks"
    raise ValueError(
        f"no known dataset layout under {root}; looked for {SIIM_CSV} (siim), {RSNA_CSV} (rsna), "
        f"{' or '.join(CHESTXRAY14_CSVS)} (chestxray14), {COVID_CSV} with covid-chestxray-dataset columns "
        "(covidcxr), "
        f"{PADCHEST_CSV} or a single CSV with columns {list(PADCHEST_COLUMNS)} (padchest), "
        "CXR_png/ with ManualMask/leftMask+rightMask/ or mask/, or images/ with masks/ (lungmasks)"
    )


def read_dataset(root: Path, *, format: str = "auto") -> list[ImageRecord]:
    """Records of the dataset at ``root``; ``format`` is ``auto`` or one of :data:`FORMATS`."""
    root = Path(root)
    if format == "auto":
        format = detect_format(root)
        logger.info("%s: detected dataset format %r", root, format)
    elif format not in FORMATS:
        raise ValueError(f"format must be 'auto' or one of {FORMATS}, got {format!r}")
    if format == "siim":
        return read_siim(root)
    if format == "rsna":
        return read_rsna_pneumonia(root)
    if format == "chestxray14":
        return read_chestxray14(root)
    if format == "covidcxr":
        return read_covid_cxr(root)
    if format == "padchest":
        return read_padchest(root)
    return read_lung_masks(root)


def load_image(record: ImageRecord) -> np.ndarray:
    """Display image of a record: float32 in [0, 1], white = dense."""
    return read_image_display(record.path)


def load_lung_mask(record: ImageRecord, *, shape: tuple[int, int] | None = None) -> np.ndarray | None:
    """Lung mask (union of the record's mask files) as bool, resized to ``shape``; None if absent."""
    if not record.lung_mask:
        return None
    return read_mask(record.lung_mask, shape=shape)


def load_opacity_mask(record: ImageRecord, *, shape: tuple[int, int] | None = None) -> np.ndarray | None:
    """Opacity mask as bool, resized to ``shape``; None when the record has none."""
    if not record.opacity_mask:
        return None
    return read_mask(record.opacity_mask, shape=shape)
