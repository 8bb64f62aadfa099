"""cxr_models.imaging.display_array: the lookup-table path gives the float64 transform's values
exactly, and never makes full-size float64 copies of the image."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from cxr_models.imaging import _transform, _weighted_percentiles, display_array


def _dataset(pixels: np.ndarray, **attributes: object) -> Dataset:
    ds = Dataset()
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.BitsAllocated = 8 * pixels.dtype.itemsize
    ds.BitsStored = attributes.pop("BitsStored", ds.BitsAllocated)
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 1 if pixels.dtype.kind == "i" else 0
    ds.PhotometricInterpretation = "MONOCHROME2"
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def _voi_lut(first: int, entries: int, bits: int) -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [entries, first, bits]
    item.LUTData = [int(v) for v in np.linspace(0, 2**bits - 1, entries)]
    return item


_rng = np.random.default_rng(3)
_U12 = (_rng.normal(1800, 500, (97, 131)).clip(0, 4095)).astype(np.uint16)
_S16 = (_rng.normal(-200, 900, (64, 80)).clip(-32768, 32767)).astype(np.int16)
_U8 = _rng.integers(20, 230, (50, 70)).astype(np.uint8)
CASES = {
    "robust min/max, 12 bits": (_U12, {"BitsStored": 12}),
    "window": (_U12, {"BitsStored": 12, "WindowCenter": 1700.3, "WindowWidth": 1201.7}),
    "narrow window": (_U12, {"BitsStored": 12, "WindowCenter": 1800.5, "WindowWidth": 2.0}),
    "rescale, non-integral": (_U12, {"BitsStored": 12, "RescaleSlope": 0.37, "RescaleIntercept": -12.5}),
    "negative rescale slope": (_U12, {"BitsStored": 12, "RescaleSlope": -1.0, "RescaleIntercept": 4095.0}),
    "MONOCHROME1": (_U12, {"BitsStored": 12, "PhotometricInterpretation": "MONOCHROME1"}),
    "INVERSE": (_U12, {"BitsStored": 12, "PresentationLUTShape": "INVERSE", "WindowCenter": 2000, "WindowWidth": 3000}),
    "signed 16 bits": (_S16, {}),
    "signed with window": (_S16, {"WindowCenter": -100, "WindowWidth": 2500}),
    "8 bits": (_U8, {}),
    "VOI LUT sequence": (_U12, {"BitsStored": 12, "VOILUTSequence": [_voi_lut(0, 4096, 12)]}),
    "VOI LUT sequence, 8-bit output": (_U12, {"BitsStored": 12, "VOILUTSequence": [_voi_lut(500, 2000, 8)]}),
    "constant image": (np.full((40, 40), 77, dtype=np.uint16), {}),
    "two values": (np.where(_rng.random((40, 40)) < 0.5, 10, 900).astype(np.uint16), {}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_lookup_table_gives_the_float64_transform_of_the_whole_image(name: str) -> None:
    pixels, attributes = CASES[name]
    ds = _dataset(pixels, **attributes)
    expected = _transform(ds, pixels, str(ds.PhotometricInterpretation))
    got = display_array(ds, pixels)
    assert got.dtype == np.float32 and got.shape == pixels.shape
    np.testing.assert_array_equal(got, expected)


def test_weighted_percentiles_are_numpys_bit_for_bit() -> None:
    rng = np.random.default_rng(11)
    for index in range(300):
        values = rng.choice(rng.normal(size=int(rng.integers(1, 200))) * 1000, size=int(rng.integers(1, 3000)))
        if index % 3 == 0:
            values = np.round(values)
        unique, counts = np.unique(values, return_counts=True)
        order = rng.permutation(len(unique))
        assert _weighted_percentiles(unique[order], counts[order]) == tuple(np.percentile(values, [0.5, 99.5]))


def test_no_full_size_float64_copies() -> None:
    """The old transform made several float64 copies of the image (8 bytes a pixel each); the
    lookup path allocates the float32 result plus bounded blocks."""
    pixels = np.random.default_rng(5).integers(0, 4096, (2500, 2500)).astype(np.uint16)
    ds = _dataset(pixels, BitsStored=12, WindowCenter=2048, WindowWidth=4000)
    tracemalloc.start()
    try:
        display_array(ds, pixels)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    result_bytes = pixels.size * 4
    assert peak < result_bytes + 8 * 2**20, f"peak {peak / 2**20:.0f} MiB for a {result_bytes / 2**20:.0f} MiB result"


def test_a_dataset_without_pixels_argument_is_decoded(tmp_path) -> None:
    pixels, attributes = CASES["window"]
    ds = _dataset(pixels, **attributes)
    ds.PixelData = pixels.tobytes()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    np.testing.assert_array_equal(display_array(ds), display_array(ds, pixels))


_S12 = (_rng.normal(-300, 600, (64, 80)).clip(-2048, 2047)).astype(np.int16)
UNUSED_BITS_CASES = {
    name: CASES[name]
    for name in ("robust min/max, 12 bits", "window", "rescale, non-integral", "MONOCHROME1", "VOI LUT sequence")
} | {
    "signed 12 bits": (_S12, {"BitsStored": 12}),
    "signed 12 bits with window": (_S12, {"BitsStored": 12, "WindowCenter": -100, "WindowWidth": 1500}),
    "7 bits in 8": ((_U8 >> 1).astype(np.uint8), {"BitsStored": 7}),
}


def _set_unused_bits(pixels: np.ndarray, bits_stored: int, seed: int) -> np.ndarray:
    """``pixels`` with random bits above ``bits_stored``, as a modality may leave them."""
    unsigned = pixels.view(np.dtype(f"u{pixels.dtype.itemsize}"))
    width = 8 * pixels.dtype.itemsize
    noise = np.random.default_rng(seed).integers(0, 1 << (width - bits_stored), pixels.shape)
    low = unsigned & ((1 << bits_stored) - 1)
    return (low | (noise << bits_stored).astype(unsigned.dtype)).view(pixels.dtype)


@pytest.mark.parametrize("name", sorted(UNUSED_BITS_CASES))
def test_unused_bits_are_ignored_as_pydicoms_correction_does(name: str) -> None:
    pixels, attributes = UNUSED_BITS_CASES[name]
    ds = _dataset(pixels, **dict(attributes))
    raw = _set_unused_bits(pixels, int(ds.BitsStored), seed=len(name))
    shift = int(ds.BitsAllocated) - int(ds.BitsStored)
    corrected = np.right_shift(np.left_shift(raw, shift), shift)  # pydicom's correct_unused_bits
    np.testing.assert_array_equal(corrected, pixels)
    assert not np.array_equal(raw, pixels)
    np.testing.assert_array_equal(display_array(ds, raw, unused_bits_set=True), display_array(ds, pixels))
    # Without the flag the stored bits are taken as they are: the garbage shows.
    assert not np.array_equal(display_array(ds, raw), display_array(ds, pixels))
