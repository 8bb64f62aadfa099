"""Readers of the real-radiograph layouts (NIH ChestX-ray14 + RSNA boxes, covid-chestxray-dataset).

The miniatures of tests/models/fixtures_real.py are generated; the last tests read the real
pack (``CXR_REALCXR``, default ``<repo>/../shared/realcxr``) and are skipped where it is absent.
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_models.datasets import (
    FORMATS,
    detect_format,
    load_image,
    load_lung_mask,
    read_chestxray14,
    read_covid_cxr,
    read_dataset,
)
from cxr_models.datasets.chestxray14 import LICENCE as NIH_LICENCE
from cxr_models.datasets.covid_cxr import covid_view, patient_groups, read_severity
from cxr_models.imaging import read_image_display
from cxr_models.records import Box
from tests.models.fixtures_real import (
    BBOX_HEADER,
    NihImage,
    build_chestxray14,
    ramp,
    tiny_chestxray14,
    tiny_covid_cxr,
    write_image,
    write_lines,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


def _by_id(records):
    return {r.image_id: r for r in records}


def _sorted(records) -> bool:
    return records == sorted(records, key=lambda r: (r.study_id or "", r.image_id))


# --------------------------------------------------------------------------- ChestX-ray14


def test_chestxray14_records(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tiny_chestxray14(tmp_path)
    with caplog.at_level(logging.WARNING):
        records = read_chestxray14(root)
    assert "skipped 1 image(s) whose View Position is not PA/AP: {'LL': 1}" in caplog.text
    assert "skipped 1 image(s) whose file is missing" in caplog.text
    by_id = _by_id(records)
    assert list(by_id) == ["00000001_000.png", "00000001_001.png", "00000002_000.png", "00000003_000.png",
                           "00000004_000.png"]  # fmt: skip
    assert _sorted(records)
    first = by_id["00000001_000.png"]
    # RSNA boxes on the 1024 grid, halved for the 512-pixel image; the NIH box is ignored.
    assert first.boxes == (Box(50.0, 100.0, 200.0, 300.0), Box(300.0, 110.0, 425.0, 300.0))
    assert (first.path, first.study_id, first.patient_id) == (root / "images" / "00000001_000.png", "00000001_000", "1")
    assert by_id["00000001_001.png"].boxes == ()  # RSNA Target 0, though NIH says Pneumonia
    assert by_id["00000001_001.png"].patient_id == "1"
    assert by_id["00000002_000.png"].boxes == ()  # unmatched "No Finding"
    # Unmatched NIH Pneumonia box on a 256 x 128 image (x by 1/4, y by 1/8); Cardiomegaly box left out.
    assert by_id["00000003_000.png"].boxes == (Box(128.0, 32.0, 160.0, 96.0),)
    assert by_id["00000004_000.png"].boxes is None  # abnormal, only an Effusion box: unknown
    assert {r.image_id: r.abnormal for r in records} == {
        "00000001_000.png": True, "00000001_001.png": True, "00000002_000.png": False,
        "00000003_000.png": True, "00000004_000.png": True,
    }  # fmt: skip
    for record in records:
        assert record.view == "frontal"
        assert record.lung_mask is None and record.opacity_mask is None
        assert record.licence == NIH_LICENCE
        assert record.source is None and record.weight == 1.0
        assert record.study_id == record.image_id.removesuffix(".png")


def test_chestxray14_nested_release_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    flat = read_chestxray14(tiny_chestxray14(tmp_path / "flat"))
    root = tiny_chestxray14(tmp_path / "nested", nested=True)
    calls = []
    original = Path.rglob

    def counting_rglob(self, pattern, *args, **kwargs):
        calls.append(pattern)
        return original(self, pattern, *args, **kwargs)

    monkeypatch.setattr(Path, "rglob", counting_rglob)
    nested = read_chestxray14(root)
    assert len(calls) == 1  # one index of the tree, not one search per row
    assert [r.path.relative_to(root).parts[0] for r in nested] == ["images_001", "images_002", "images_001",
                                                                   "images_002", "images_001"]  # fmt: skip
    assert [(r.image_id, r.boxes, r.abnormal, r.patient_id) for r in nested] == [
        (r.image_id, r.boxes, r.abnormal, r.patient_id) for r in flat
    ]


def test_chestxray14_old_data_entry_name(tmp_path: Path) -> None:
    new = read_chestxray14(tiny_chestxray14(tmp_path / "new"))
    root = tiny_chestxray14(tmp_path / "old", old_name=True)
    assert not (root / "Data_Entry_2017_v2020.csv").exists()
    assert detect_format(root) == "chestxray14"
    old = read_dataset(root)
    assert [(r.image_id, r.boxes, r.abnormal) for r in old] == [(r.image_id, r.boxes, r.abnormal) for r in new]


def test_chestxray14_without_rsna_files_uses_nih_boxes(tmp_path: Path) -> None:
    root = tiny_chestxray14(tmp_path)
    (root / "rsna_matched_images.csv").unlink()
    (root / "rsna_lung_opacity_boxes.csv").unlink()
    by_id = _by_id(read_chestxray14(root))
    assert by_id["00000001_000.png"].boxes == (Box(5.0, 5.0, 15.0, 15.0),)
    assert by_id["00000001_001.png"].boxes is None  # Pneumonia without any box: unknown
    assert by_id["00000002_000.png"].boxes == ()


@pytest.mark.parametrize(
    ("image", "fragment"),
    [
        (NihImage("00000009_000.png", "Pneumonia", 9, rsna_target=1),
         r"rsna_matched_images\.csv, line 2: image 00000009_000\.png has Target 1 but no rows"),
        (NihImage("00000009_000.png", "No Finding", 9, rsna_target=0, rsna_boxes=((1.0, 2.0, 3.0, 4.0),)),
         r"rsna_lung_opacity_boxes\.csv, line 2: column 'Image Index' value '00000009_000\.png' has RSNA boxes "
         r"but has Target 0"),
        (NihImage("00000009_000.png", "Pneumonia", 9, rsna_target=2),
         r"rsna_matched_images\.csv, line 2: column 'Target' value '2' is not 0 or 1"),
        (NihImage("00000009_000.png", "Pneumonia", 9, nih_boxes=(("Pneumonia", (1.0, 2.0, -3.0, 4.0)),)),
         r"BBox_List_2017\.csv, line 2: box width/height \(-3, 4\) is negative"),
    ],
)  # fmt: skip
def test_chestxray14_malformed_rows(tmp_path: Path, image: NihImage, fragment: str) -> None:
    root = build_chestxray14(tmp_path, [image])
    with pytest.raises(ValueError, match=fragment):
        read_chestxray14(root)


def test_chestxray14_bbox_and_entry_errors_name_file_and_line(tmp_path: Path) -> None:
    root = tiny_chestxray14(tmp_path)
    write_lines(root / "BBox_List_2017.csv", BBOX_HEADER, [["00000003_000.png", "Pneumonia", "12", "abc", "5", "6"]])
    with pytest.raises(ValueError, match=r"BBox_List_2017\.csv, line 2: box y 'abc' is not a number"):
        read_chestxray14(root)
    write_lines(root / "BBox_List_2017.csv", BBOX_HEADER, [])
    entry = root / "Data_Entry_2017_v2020.csv"
    lines = entry.read_text().splitlines()
    entry.write_text("\n".join([*lines, lines[1]]) + "\n")
    duplicate = rf"line {len(lines) + 1}: column 'Image Index' .* repeats the image of line 2"
    with pytest.raises(ValueError, match=duplicate):
        read_chestxray14(root)


# --------------------------------------------------------------------------- covid-chestxray-dataset


def test_covid_records(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tiny_covid_cxr(tmp_path)
    with caplog.at_level(logging.INFO):
        records = read_covid_cxr(root)
    assert "skipped 1 X-ray image(s) whose view is not PA/AP/L: {'Coronal': 1}" in caplog.text
    assert "skipped 1 image(s) whose file is missing" in caplog.text
    assert "skipped 1 non-X-ray row(s): {'CT': 1}" in caplog.text
    assert _sorted(records)
    summary = [(r.image_id, r.study_id, r.patient_id, r.view, r.abnormal, r.severity, r.licence) for r in records]
    assert summary == [
        ("p11_erect.png", "11_3", "11", "frontal", None, None, None),
        ("p2_l.png", "2_0", "2", "lateral", True, None, None),
        ("p2_pa.jpeg", "2_0", "2", "frontal", True, 3.7, "CC BY-NC-SA 4.0"),
        ("shared.jpg", "7_5", "7", "frontal", True, 1.0, "CC BY 4.0"),  # filed under 10 and 7: one record
        ("p10_ap.png", "7_p10_ap.png", "7", "frontal", False, None, None),  # patient 10 joins group 7
    ]
    by_id = _by_id(records)
    assert by_id["p11_erect.png"].path == root / "images" / "p11_erect.png"  # empty folder: images/
    assert by_id["shared.jpg"].path == root / "images" / "shared.jpg"
    assert {r.image_id for r in records if r.lung_mask} == {"p2_pa.jpeg", "p2_l.png", "shared.jpg"}
    assert by_id["p2_l.png"].lung_mask == (root / "masks_v7labs" / "p2_l.png.png",)
    for record in records:
        assert record.boxes is None and record.opacity_mask is None
        assert record.source is None and record.weight == 1.0


def test_covid_images_and_masks_load_as_grey(tmp_path: Path) -> None:
    records = read_covid_cxr(tiny_covid_cxr(tmp_path))
    expected = ramp(12, 16).astype(np.float32) / 255.0
    modes = {}
    for record in records:
        with Image.open(record.path) as img:
            modes[record.image_id] = (img.format, img.mode)
        image = load_image(record)
        assert image.shape == (12, 16) and image.dtype == np.float32
        tolerance = 0.03 if modes[record.image_id][0] == "JPEG" else 1e-6
        np.testing.assert_allclose(image, expected, atol=tolerance, err_msg=record.image_id)
    assert modes == {
        "p11_erect.png": ("PNG", "I;16"),
        "p2_l.png": ("PNG", "L"),
        "p2_pa.jpeg": ("JPEG", "RGB"),
        "shared.jpg": ("PNG", "RGBA"),
        "p10_ap.png": ("PNG", "P"),
    }
    mask = load_lung_mask(_by_id(records)["p2_pa.jpeg"])
    assert mask is not None and mask.shape == (12, 16) and mask.sum() == 2 * 8 * 6
    assert load_lung_mask(_by_id(records)["p10_ap.png"]) is None


def test_covid_severity_comments_and_errors(tmp_path: Path) -> None:
    root = tiny_covid_cxr(tmp_path)
    path = root / "annotations" / "covid-severity-scores.csv"
    assert path.read_text().startswith("## COVID-19 Pneumonia Severity Scores")
    assert read_severity(path) == {"p2_pa.jpeg": 3.7, "shared.jpg": 1.0, "p13_missing.jpg": 2.0,
                                   "not-in-this-copy.png": 5.3}  # fmt: skip
    with open(path, "a") as fh:
        fh.write("bad.png,9.5,3.0\n")
    with pytest.raises(ValueError, match=r"covid-severity-scores\.csv, line 11: column 'geographic_mean' value '9\.5'"):
        read_covid_cxr(root)


def test_covid_empty_patient_id_names_line(tmp_path: Path) -> None:
    root = tiny_covid_cxr(tmp_path)
    metadata = root / "metadata.csv"
    lines = metadata.read_text().splitlines()
    lines[3] = lines[3].replace("10,5,", ",5,", 1)
    metadata.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"metadata\.csv, line 4: column 'patientid' value '' is empty"):
        read_covid_cxr(root)


def test_patient_groups_union_find() -> None:
    pairs = [("10", "a"), ("7", "a"), ("10", "b"), ("30", "c"), ("30", "b"), ("4", "d"), ("x2", "e"), ("x1", "e")]
    assert patient_groups(pairs) == {"10": "7", "7": "7", "30": "7", "4": "4", "x2": "x1", "x1": "x1"}


@pytest.mark.parametrize(
    ("view", "expected"),
    [("PA", "frontal"), ("AP", "frontal"), ("AP Supine", "frontal"), ("AP Erect", "frontal"),
     ("AP semi erect", "frontal"), (" pa ", "frontal"), ("L", "lateral"), ("Axial", None), ("Coronal", None),
     ("", None)],
)  # fmt: skip
def test_covid_view(view: str, expected: str | None) -> None:
    assert covid_view(view) == expected


# --------------------------------------------------------------------------- detection, imaging


@pytest.mark.parametrize(("builder", "name"), [(tiny_chestxray14, "chestxray14"), (tiny_covid_cxr, "covidcxr")])
def test_detect_format_real_layouts(tmp_path: Path, builder, name: str) -> None:
    root = builder(tmp_path)
    assert name in FORMATS
    assert detect_format(root) == name
    records = read_dataset(root)
    assert records and records == read_dataset(root, format=name)
    assert _sorted(records)


def test_covid_metadata_without_its_columns_is_not_detected(tmp_path: Path) -> None:
    (tmp_path / "metadata.csv").write_text("a,b\n1,2\n")
    (tmp_path / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="no known dataset layout"):
        detect_format(tmp_path)


def test_read_image_display_grey_unchanged_and_colour_modes(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    grey16 = rng.integers(0, 65536, size=(9, 7), dtype=np.uint16)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    np.testing.assert_array_equal(read_image_display(tmp_path / "g16.png"), grey16.astype(np.float32) / 65535.0)
    dark16 = rng.integers(0, 200, size=(9, 7), dtype=np.uint16)  # 16-bit file with small values stays /65535
    Image.fromarray(dark16).save(tmp_path / "d16.png")
    np.testing.assert_array_equal(read_image_display(tmp_path / "d16.png"), dark16.astype(np.float32) / 65535.0)
    grey8 = rng.integers(0, 256, size=(9, 7), dtype=np.uint8)
    Image.fromarray(grey8).save(tmp_path / "g8.png")
    np.testing.assert_array_equal(read_image_display(tmp_path / "g8.png"), grey8.astype(np.float32) / 255.0)
    expected = ramp(10, 6).astype(np.float32) / 255.0
    for mode in ("RGB", "RGBA", "LA", "P"):
        path = write_image(tmp_path / f"m_{mode}.png", mode=mode, height=10, width=6)
        out = read_image_display(path)
        assert out.shape == (10, 6), mode
        np.testing.assert_allclose(out, expected, atol=1e-6, err_msg=mode)
    # A coloured pixel reads as its luma, not as the index or one channel.
    Image.fromarray(np.array([[[255, 0, 0], [0, 0, 255]]], dtype=np.uint8)).save(tmp_path / "red.png")
    np.testing.assert_allclose(read_image_display(tmp_path / "red.png"), [[76 / 255, 29 / 255]], atol=1e-6)


# --------------------------------------------------------------------------- the real pack


def _realcxr() -> Path:
    return Path(os.environ.get("CXR_REALCXR", REPO_ROOT / ".." / "shared" / "realcxr"))


needs_realcxr = pytest.mark.skipif(
    not (_realcxr() / "chestxray14").is_dir() or not (_realcxr() / "covid-chestxray-dataset").is_dir(),
    reason="real radiograph pack not found (set CXR_REALCXR)",
)


@needs_realcxr
def test_real_pack_chestxray14_counts() -> None:
    root = _realcxr() / "chestxray14"
    assert detect_format(root) == "chestxray14"
    records = read_dataset(root)
    assert len(records) == 590 and all(r.view == "frontal" for r in records)
    assert len({r.patient_id for r in records}) == 397
    with open(root / "rsna_matched_images.csv", newline="") as fh:
        matched = {row["Image Index"] for row in csv.DictReader(fh)}
    rsna = [r for r in records if r.image_id in matched]
    assert len(rsna) == 193 and all(r.boxes is not None for r in rsna)
    assert sum(1 for r in rsna if r.boxes) == 73
    assert sum(len(r.boxes or ()) for r in rsna) == 117
    assert sum(1 for r in records if r.abnormal) == 295 and sum(1 for r in records if r.abnormal is False) == 295
    for record in records:
        for box in record.boxes or ():
            assert 0 <= box.x0 < box.x1 <= 512 and 0 <= box.y0 < box.y1 <= 512


@needs_realcxr
def test_real_pack_covid_counts() -> None:
    root = _realcxr() / "covid-chestxray-dataset"
    assert detect_format(root) == "covidcxr"
    records = read_dataset(root)
    assert len(records) == 311 and len({r.image_id for r in records}) == 311
    assert sum(1 for r in records if r.view == "lateral") == 28
    assert sum(1 for r in records if r.view == "frontal") == 283
    assert sum(1 for r in records if r.lung_mask) == 241
    assert sum(1 for r in records if r.severity is not None) == 51
    assert all(r.boxes is None for r in records)
    # 170 patient ids in metadata.csv; the two that share three images are one group.
    assert len({r.patient_id for r in records}) == 169
    with open(root / "metadata.csv", newline="", encoding="utf-8-sig") as fh:
        ids_per_file: dict[str, set[str]] = {}
        for row in csv.DictReader(fh):
            ids_per_file.setdefault(row["filename"], set()).add(row["patientid"])
    shared = {name for name, ids in ids_per_file.items() if len(ids) > 1}
    assert len(shared) == 3
    assert len({r.patient_id for r in records if r.image_id in shared}) == 1
    seen_modes: set[str] = set()  # one image of each colour mode through the shared pixel path
    for record in records:
        with Image.open(record.path) as img:
            mode = img.mode
        if mode in seen_modes:
            continue
        seen_modes.add(mode)
        image = load_image(record)
        assert image.ndim == 2 and image.dtype == np.float32 and 0.0 <= image.min() <= image.max() <= 1.0
    assert {"RGB", "RGBA", "L"} <= seen_modes
