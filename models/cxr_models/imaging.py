"""Pixel transforms shared by training and inference, so both see the same image.

``display_array`` turns the stored pixels of a CR/DX image into a float32 array in
[0, 1] where 1 is the brightest displayed value (dense tissue white, MONOCHROME2 sense):
Modality LUT / rescale, then VOI LUT sequence or window, then MONOCHROME1 inversion and
Presentation LUT Shape. Resizing helpers keep one interpolation convention everywhere.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image
from pydicom.pixels import apply_modality_lut, apply_voi_lut

logger = logging.getLogger(__name__)


def _first(value: object) -> float | None:
    """First value of a possibly multi-valued numeric element, or None."""
    if value is None:
        return None
    if isinstance(value, (list, tuple, pydicom.multival.MultiValue)):
        if len(value) == 0:
            return None
        value = value[0]
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# Pixels per block when the stored values are counted (_BLOCK_PIXELS) and looked up
# (_LOOKUP_PIXELS): bounds the temporaries (one index array of the block) whatever the image size.
_BLOCK_PIXELS = 1 << 18
_LOOKUP_PIXELS = 1 << 16
_PERCENTILES = (0.5, 99.5)


def _robust_minmax(values: np.ndarray, percentiles=None) -> np.ndarray:
    lo, hi = np.percentile(values, list(_PERCENTILES)) if percentiles is None else percentiles(values)
    if hi <= lo:
        lo, hi = float(values.min()), float(values.max())
    if hi <= lo:
        return np.zeros(values.shape, dtype=np.float32)
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def display_array(ds: pydicom.Dataset, pixels: np.ndarray | None = None, *, unused_bits_set: bool = False) -> np.ndarray:
    """Display-ready float32 image in [0, 1] (white = dense) from a single-frame greyscale dataset.

    ``pixels`` may pass an already decoded ``ds.pixel_array`` to avoid decoding twice.
    ``unused_bits_set``: ``pixels`` were decoded without pydicom's correction of the bits above
    Bits Stored (``correct_unused_bits=False``, which gives a view on native pixel data instead
    of a corrected copy); they are ignored here as that correction would (a shift left by Bits
    Allocated - Bits Stored and back, sign-extending signed values), through the lookup table.
    Raises ValueError when the dataset is not single-frame greyscale.

    Integer pixels of 8 or 16 bits (every image ingest accepts) go through a lookup table: the
    grey-level transform is computed in float64 once per stored value present in the image, and
    the image is mapped through the table in blocks, so the only full-size array made is the
    float32 result (an 8000 x 8000 image no longer makes float64 copies of 512 MB). The values
    are those of the transform applied to the whole image; other pixel types take that path.
    """
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"PhotometricInterpretation must be MONOCHROME1/2, got {photometric!r}")
    arr = ds.pixel_array if pixels is None else pixels
    if arr.ndim != 2:
        raise ValueError(f"expected a single-frame greyscale image, got pixel array shape {arr.shape}")
    shift = _unused_bits(ds, arr) if unused_bits_set and pixels is not None else 0
    if arr.dtype.kind in "ui" and arr.dtype.itemsize <= 2:
        return _display_by_lookup(ds, arr, photometric, shift=shift)
    if shift:
        arr = np.right_shift(np.left_shift(arr, shift), shift)
    return _transform(ds, arr, photometric)


def _unused_bits(ds: pydicom.Dataset, arr: np.ndarray) -> int:
    """Bits Allocated - Bits Stored of an integer array, as pydicom's unused-bit correction shifts."""
    if arr.dtype.kind not in "ui":
        return 0
    shift = int(ds.BitsAllocated) - int(ds.BitsStored)
    return shift if 0 < shift < 8 * arr.dtype.itemsize else 0


def _transform(ds: pydicom.Dataset, arr: np.ndarray, photometric: str, percentiles=None) -> np.ndarray:
    """The grey-level transform of stored values ``arr`` (any shape), float32 in [0, 1].

    ``percentiles`` (values -> (0.5th, 99.5th) percentile) replaces ``np.percentile`` of the
    values when ``arr`` holds each stored value once and the image's counts are elsewhere.
    """
    modality = apply_modality_lut(arr, ds)
    if modality.dtype.kind == "f" and np.array_equal(modality, np.round(modality)):
        # Integral modality values: LUT lookups (VOI LUT Sequence) index them as integers.
        modality = modality.astype(np.int64)
    values = modality.astype(np.float64)

    has_voi_sequence = "VOILUTSequence" in ds and len(ds.VOILUTSequence) > 0
    center = _first(ds.get("WindowCenter"))
    width = _first(ds.get("WindowWidth"))
    if has_voi_sequence or (center is not None and width is not None and width > 1):
        try:
            windowed = apply_voi_lut(modality, ds, index=0).astype(np.float64)
        except (ValueError, AttributeError, IndexError, KeyError) as exc:
            logger.warning("VOI LUT could not be applied (%s); using robust min/max", exc)
            out = _robust_minmax(values, percentiles)
        else:
            if has_voi_sequence:
                bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
                top = float(2**bits - 1) if bits > 0 else float(windowed.max() or 1.0)
                out = np.clip(windowed / top, 0.0, 1.0).astype(np.float32)
            else:
                lo, hi = center - width / 2.0, center + width / 2.0
                out = np.clip((values - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    else:
        out = _robust_minmax(values, percentiles)

    # MONOCHROME1 and Presentation LUT Shape INVERSE each mean "low values display white". DX For
    # Presentation requires INVERSE alongside MONOCHROME1: the two describe ONE inversion, never two.
    shape = str(ds.get("PresentationLUTShape", "")).strip().upper()
    if photometric == "MONOCHROME1" or shape == "INVERSE":
        out = 1.0 - out
    return out


def _table_index(block: np.ndarray) -> np.ndarray:
    """Table positions of stored values: the value itself, signed values shifted to start at 0."""
    if block.dtype.kind == "i":
        unsigned = np.dtype(f"u{block.dtype.itemsize}")
        return block.view(unsigned) ^ unsigned.type(1 << (8 * block.dtype.itemsize - 1))
    return block


class _CountsNeeded(Exception):
    """The transform needs the image's percentiles, hence its counts of each stored value."""


def _no_percentiles(values: np.ndarray) -> tuple[float, float]:
    raise _CountsNeeded


def _display_by_lookup(ds: pydicom.Dataset, arr: np.ndarray, photometric: str, *, shift: int = 0) -> np.ndarray:
    """:func:`_transform` of the stored values, then ``arr`` through that table.

    Without a VOI LUT Sequence the transform of each value does not depend on which others the
    image holds (modality rescale or LUT, window, inversion are elementwise), so the table is
    the transform of every value the pixel type can hold and the image is not counted, unless
    the transform turns out to need the image's percentiles (no window). Otherwise (VOI LUT
    Sequence, percentiles) it is the transform of the values present, counted a block at a time.
    ``shift``: the unused bits to ignore (:func:`display_array`'s ``unused_bits_set``).
    """
    size = 1 << (8 * arr.dtype.itemsize)
    rows_per_block = max(1, _BLOCK_PIXELS // max(1, arr.shape[1]))
    offset = -int(np.iinfo(arr.dtype).min)
    every = (np.arange(size) - offset).astype(arr.dtype)  # the value at each table position
    # Table position of the value each position holds once its unused bits are ignored.
    stored = _table_index(np.right_shift(np.left_shift(every, shift), shift)) if shift else None

    table = None
    if not ("VOILUTSequence" in ds and len(ds.VOILUTSequence) > 0):
        try:
            table = _transform(ds, every, photometric, _no_percentiles)
        except _CountsNeeded:
            table = None
    if table is None:
        counts = np.zeros(size, dtype=np.int64)
        for start in range(0, arr.shape[0], rows_per_block):
            counts += np.bincount(_table_index(arr[start : start + rows_per_block]).ravel(), minlength=size)
        if stored is not None:
            counts = np.bincount(stored, weights=counts, minlength=size).astype(np.int64)
        positions = np.flatnonzero(counts)

        def percentiles(values: np.ndarray) -> tuple[float, float]:
            return _weighted_percentiles(values, counts[positions])

        table = np.zeros(size, dtype=np.float32)
        table[positions] = _transform(ds, every[positions], photometric, percentiles)
    if stored is not None:
        table = table[stored]
    # Every index is a table position (the table covers the pixel type), so the lookup needs no
    # bounds check: mode "wrap" skips it (three times faster than the default "raise"), in
    # blocks small enough for the index array take makes of each to stay in the CPU cache.
    out = np.empty(arr.shape, dtype=np.float32)
    rows_per_lookup = max(1, _LOOKUP_PIXELS // max(1, arr.shape[1]))
    for start in range(0, arr.shape[0], rows_per_lookup):
        stop = start + rows_per_lookup
        np.take(table, _table_index(arr[start:stop]), out=out[start:stop], mode="wrap")
    return out


def _weighted_percentiles(values: np.ndarray, counts: np.ndarray) -> tuple[float, float]:
    """``np.percentile(image, [0.5, 99.5])`` (its default linear method, step for step) of an
    image holding ``counts[i]`` pixels of value ``values[i]``."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    cumulative = np.cumsum(counts[order])
    n = int(cumulative[-1])

    def at(rank: int) -> np.float64:
        return ordered[np.searchsorted(cumulative, rank, side="right")]

    result = []
    for q in np.true_divide(np.asarray(_PERCENTILES, dtype=np.float64), 100):
        virtual = (n - 1) * q
        if virtual >= n - 1:
            a = b = ordered[-1]
            gamma = np.float64(0.0)
        else:
            previous = int(np.floor(virtual))
            a, b = at(previous), at(previous + 1)
            gamma = virtual - previous
        diff = b - a
        result.append(float(b - diff * (1 - gamma)) if gamma >= 0.5 else float(a + diff * gamma))
    return result[0], result[1]


def read_dicom_display(path: Path | str) -> np.ndarray:
    """Read a DICOM file and return its display array (see :func:`display_array`)."""
    ds = pydicom.dcmread(str(path))
    return display_array(ds)


# PIL modes read as they are: 8-bit grey, 16-bit grey (any byte order), 32-bit int and float grey.
_GREY_MODES = frozenset({"L", "I", "F"})


def read_image_display(path: Path | str) -> np.ndarray:
    """Display array for a DICOM file or a PNG/JPEG/TIFF image, as one grey channel.

    Grey images (8-bit, 16-bit ``I;16*``, ``I``) keep their full precision: 16-bit values are
    divided by 65535, 8-bit ones by 255. Every other mode (RGB, RGBA, LA, palette ``P``/``PA``,
    CMYK, YCbCr, 1-bit) is converted to 8-bit grey by PIL (ITU-R 601 luma; alpha dropped;
    palettes with transparency go through RGBA first).
    """
    path = Path(path)
    if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff"):
        with Image.open(path) as img:
            if img.mode not in _GREY_MODES and not img.mode.startswith("I;16"):
                if img.mode in ("P", "PA"):
                    img = img.convert("RGBA")
                img = img.convert("L")
            arr = np.asarray(img)
        if arr.ndim != 2:
            raise ValueError(f"{path}: expected one grey channel after conversion, got shape {arr.shape}")
        sixteen_bit = arr.dtype.kind == "u" and arr.dtype.itemsize == 2
        top = 65535.0 if sixteen_bit or arr.max() > 255 else 255.0
        return np.clip(arr.astype(np.float32) / top, 0.0, 1.0)
    return read_dicom_display(path)


def resize(image: np.ndarray, *, height: int, width: int, nearest: bool = False) -> np.ndarray:
    """Resize a 2-D float or bool array with PIL (bilinear, or nearest for masks)."""
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D, got shape {image.shape}")
    if image.dtype == bool:
        pil = Image.fromarray(image.astype(np.uint8) * 255)
        out = pil.resize((width, height), Image.NEAREST if nearest else Image.BILINEAR)
        return np.asarray(out) >= 128
    pil = Image.fromarray(image.astype(np.float32, copy=False), mode="F")
    out = pil.resize((width, height), Image.NEAREST if nearest else Image.BILINEAR)
    return np.asarray(out, dtype=np.float32)


def read_mask(paths: tuple[Path, ...], *, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Union of binary mask images (non-zero = inside) as a bool array, resized to ``shape``."""
    if not paths:
        raise ValueError("paths must name at least one mask file")
    union: np.ndarray | None = None
    for p in paths:
        with Image.open(p) as img:
            m = np.asarray(img.convert("L")) > 0
        if union is None:
            union = m
        else:
            if m.shape != union.shape:
                m = resize(m, height=union.shape[0], width=union.shape[1], nearest=True)
            union |= m
    assert union is not None
    if shape is not None and union.shape != tuple(shape):
        union = resize(union, height=shape[0], width=shape[1], nearest=True)
    return union
