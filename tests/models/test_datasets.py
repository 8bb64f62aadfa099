"""Dataset readers on tiny fixtures written in each public on-disk layout."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from cxr_models.datasets import (
    detect_format,
    load_image,
    load_lung_mask,
    load_opacity_mask,
    read_dataset,
    read_lung_masks,
    read_padchest,
    read_rsna_pneumonia,
    read_siim,
    read_siim_unlabelled,
)
from cxr_models.datasets.csvio import read_rows
from cxr_models.datasets.siim import parse_boxes, parse_label
from cxr_models.datasets.summary import get_args_parser, main
from cxr_models.records import Box
from tests.models.fixtures_datasets import (
    LEFT_LUNG,
    RIGHT_LUNG,
    PadchestImage,
    box_mask,
    gradient_pixels,
    siim_boxes_cell,
    build_lung_masks,
    build_padchest,
    build_rsna,
    tiny_padchest,
    tiny_rsna,
    tiny_siim,
    write_csv,
    write_dicom,
    write_png,
)

SIIM_IMAGE_HEADER = ["id", "boxes", "label", "StudyInstanceUID"]


def _by_id(records):
    return {r.image_id: r for r in records}


# --------------------------------------------------------------------------- SIIM


def test_siim_records_boxes_labels_and_missing_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tiny_siim(tmp_path)
    with caplog.at_level(logging.WARNING):
        records = read_siim(root)
    assert [r.image_id for r in records] == ["1.2.3.1.1", "1.2.3.2.1"]
    assert "skipped 1 image(s) whose DICOM file is missing" in caplog.text
    first, second = records
    assert first.boxes == (Box(2, 3, 10, 12), Box(15, 4, 30, 20))
    assert second.boxes == ()
    assert (first.study_id, first.study_label) == ("1.2.3.1", "typical")
    assert (second.study_id, second.study_label) == ("1.2.3.2", "negative")
    assert {r.view for r in records} == {"frontal"}
    assert first.path == root / "train" / "1.2.3.1" / "1.2.3.1.9" / "1.2.3.1.1.dcm"
    assert first.lung_mask is None and first.opacity_mask is None and first.opacity_percent is None
    image = load_image(first)
    assert image.shape == (32, 32) and image.dtype == np.float32
    assert 0.0 <= image.min() < image.max() <= 1.0
    assert load_lung_mask(first, shape=(32, 32)) is None


def test_siim_boxes_column_fallback_with_bom(tmp_path: Path) -> None:
    records = read_siim(tiny_siim(tmp_path, label_column=False, bom=True))
    assert _by_id(records)["1.2.3.1.1"].boxes == (Box(2, 3, 10, 12), Box(15, 4, 30, 20))
    assert _by_id(records)["1.2.3.2.1"].boxes == ()
    assert _by_id(records)["1.2.3.1.1"].study_label == "typical"


def test_siim_label_wins_and_messy_cells_tolerated(tmp_path: Path) -> None:
    root = tiny_siim(tmp_path)
    write_csv(
        root / "train_image_level.csv",
        [" id ", "boxes", "label", "StudyInstanceUID", "extra"],
        [
            ["1.2.3.1.1_image ", siim_boxes_cell([(0, 0, 1, 1)]), " opacity 0.9 4 5 6.5 7 ", "1.2.3.1", "x"],
            ["1.2.3.2.1_image", "NaN", "none 1 0 0 1 1", "1.2.3.2 ", ""],
            [],
            ["1.2.3.2.2_image", "nan", "", "1.2.3.2"],
        ],
    )
    records = _by_id(read_siim(root))
    assert records["1.2.3.1.1"].boxes == (Box(4, 5, 6.5, 7),)
    assert records["1.2.3.2.1"].boxes == ()
    assert records["1.2.3.2.1"].study_id == "1.2.3.2"
    assert "1.2.3.2.2" not in records  # listed but no DICOM file


@pytest.mark.parametrize(
    ("label", "boxes", "fragment"),
    [
        ("opacity 1 2 3 10", "", "'opacity 1 2 3 10'"),
        ("opacity 1 2 3 ten 12", "", "non-numeric"),
        ("lesion 1 2 3 10 12", "", "unknown class 'lesion'"),
        ("opacity 1 10 3 2 12", "", "negative extent"),
        ("", "__import__('os').getcwd()", "not a Python literal"),
        ("", "[{'x': 1, 'y': 2}]", "without all of the keys"),
    ],
)
def test_siim_malformed_row_names_file_line_and_value(tmp_path: Path, label: str, boxes: str, fragment: str) -> None:
    root = tiny_siim(tmp_path)
    write_csv(
        root / "train_image_level.csv",
        SIIM_IMAGE_HEADER,
        [["1.2.3.2.1_image", "", "none 1 0 0 1 1", "1.2.3.2"], ["1.2.3.1.1_image", boxes, label, "1.2.3.1"]],
    )
    with pytest.raises(ValueError) as info:
        read_siim(root)
    message = str(info.value)
    assert "train_image_level.csv, line 3" in message
    assert fragment in message


def test_siim_study_level_must_be_one_hot(tmp_path: Path) -> None:
    root = tiny_siim(tmp_path)
    write_csv(
        root / "train_study_level.csv",
        ["id", "Negative for Pneumonia", "Typical Appearance", "Indeterminate Appearance", "Atypical Appearance"],
        [["1.2.3.1_study", 0, 1, 0, 0], ["1.2.3.2_study", 1, 1, 0, 0]],
    )
    with pytest.raises(ValueError, match=r"train_study_level\.csv, line 3: study '1\.2\.3\.2'"):
        read_siim(root)


def test_parse_label_and_boxes_strings() -> None:
    assert parse_label("opacity 0.5 1 2 3 4 none 1 0 0 1 1") == (Box(1, 2, 3, 4),)
    assert parse_label("none 1 0 0 1 1") == ()
    assert parse_boxes("[{'x': 1.5, 'y': 2, 'width': 3, 'height': 4.5}]") == (Box(1.5, 2, 4.5, 6.5),)
    assert parse_boxes("") == ()


def test_phantom_extension_views_masks_percent(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tiny_siim(tmp_path, phantom=True)
    with caplog.at_level(logging.WARNING):
        records = read_siim(root)
    assert "skipped 1 image(s)" in caplog.text
    assert [r.image_id for r in records] == ["1.2.3.1.1", "1.2.3.1.2", "1.2.3.2.1", "1.2.3.4.1"]
    by_id = _by_id(records)
    frontal, lateral, negative, other = (by_id[k] for k in ("1.2.3.1.1", "1.2.3.1.2", "1.2.3.2.1", "1.2.3.4.1"))
    assert [frontal.view, lateral.view, negative.view, other.view] == ["frontal", "lateral", "frontal", "other"]
    assert lateral.boxes is None and other.boxes is None
    assert frontal.boxes == (Box(2, 3, 10, 12), Box(15, 4, 30, 20))
    assert lateral.study_label == "typical" and other.study_label is None
    assert frontal.opacity_percent == pytest.approx(12.5) and negative.opacity_percent == 0.0
    assert lateral.opacity_percent is None
    assert lateral.lung_mask is None and load_lung_mask(lateral, shape=(16, 16)) is None
    lung = load_lung_mask(frontal, shape=(32, 32))
    assert lung is not None and lung.dtype == bool
    assert lung.sum() == 12 * 28 * 2
    opacity = load_opacity_mask(frontal)
    np.testing.assert_array_equal(opacity, box_mask([(2, 3, 10, 12), (15, 4, 30, 20)]))
    small = load_opacity_mask(frontal, shape=(16, 16))
    assert small is not None and small.shape == (16, 16) and small.any()
    negative_opacity = load_opacity_mask(negative)
    assert negative_opacity is not None and not negative_opacity.any()


def test_phantom_catalogue_disagreeing_label_raises(tmp_path: Path) -> None:
    root = tiny_siim(tmp_path, phantom=True)
    text = (root / "images.csv").read_text().replace(",typical,", ",atypical,", 1)
    (root / "images.csv").write_text(text)
    with pytest.raises(ValueError, match=r"images\.csv, line 2: study_label 'atypical'"):
        read_siim(root)


def test_siim_unlabelled_test_folder(tmp_path: Path) -> None:
    for sop, study in (("9.2.2", "9.2"), ("9.1.1", "9.1"), ("9.1.2", "9.1")):
        write_dicom(
            tmp_path / "test" / study / f"{study}.7" / f"{sop}.dcm",
            sop_instance_uid=sop,
            study_instance_uid=study,
            series_instance_uid=f"{study}.7",
        )
    records = read_siim_unlabelled(tmp_path)
    assert [(r.study_id, r.image_id) for r in records] == [("9.1", "9.1.1"), ("9.1", "9.1.2"), ("9.2", "9.2.2")]
    assert all(r.boxes is None and r.study_label is None and r.path.is_file() for r in records)
    with pytest.raises(ValueError, match="has no missing/ folder"):
        read_siim_unlabelled(tmp_path, folder="missing")


# --------------------------------------------------------------------------- RSNA Pneumonia


def test_rsna_records(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tiny_rsna(tmp_path)
    with caplog.at_level(logging.WARNING):
        records = read_rsna_pneumonia(root)
    assert "skipped 1 patient(s)" in caplog.text
    assert [r.image_id for r in records] == ["p-a", "p-b"]
    negative, positive = records
    assert negative.boxes == ()
    assert positive.boxes == (Box(1, 2, 11, 7), Box(12.5, 3, 16.5, 23))
    assert all(r.view == "frontal" and r.study_label is None and r.study_id == r.image_id for r in records)
    assert positive.path == root / "stage_2_train_images" / "p-b.dcm"


def test_rsna_class_info_contradiction(tmp_path: Path) -> None:
    root = build_rsna(tmp_path, {"p1": ((1, 1, 2, 2),), "p2": ()})
    write_csv(root / "stage_2_detailed_class_info.csv", ["patientId", "class"], [["p1", "Normal"], ["p2", "Normal"]])
    with pytest.raises(ValueError, match="class 'Normal' of p1 contradicts its 1 box"):
        read_rsna_pneumonia(root)


def test_rsna_target_one_without_box(tmp_path: Path) -> None:
    root = build_rsna(tmp_path, {"p1": ()}, class_info=False)
    write_csv(
        root / "stage_2_train_labels.csv",
        ["patientId", "x", "y", "width", "height", "Target"],
        [["p1", "", "", "", "", 0], ["p2", 3, "", 4, 5, 1]],
    )
    with pytest.raises(ValueError, match=r"stage_2_train_labels\.csv, line 3: column 'y' value '' is empty"):
        read_rsna_pneumonia(root)


# --------------------------------------------------------------------------- lung masks


@pytest.mark.parametrize(
    ("variant", "suffix", "n_files"),
    [("montgomery", ".png", 2), ("shenzhen", ".png", 1), ("generic", ".jpg", 1), ("generic_lr", ".png", 2)],
)
def test_lung_mask_variants(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, variant: str, suffix: str, n_files: int
) -> None:
    root = build_lung_masks(tmp_path, variant=variant, image_suffix=suffix)
    with caplog.at_level(logging.WARNING):
        records = read_lung_masks(root)
    assert "skipped 1 image(s) without a complete lung mask" in caplog.text
    assert [r.image_id for r in records] == ["img_a", "img_b"]
    expected = box_mask([LEFT_LUNG, RIGHT_LUNG])
    for record in records:
        assert record.view == "frontal" and record.study_id == record.image_id and record.boxes is None
        assert record.path.suffix == suffix
        assert record.lung_mask is not None and len(record.lung_mask) == n_files
        np.testing.assert_array_equal(load_lung_mask(record), expected)
    assert read_dataset(root) == records


def test_lung_masks_unknown_variant(tmp_path: Path) -> None:
    build_lung_masks(tmp_path, variant="generic")
    with pytest.raises(ValueError, match="variant must be 'auto' or one of"):
        read_lung_masks(tmp_path, variant="jsrt")


# --------------------------------------------------------------------------- PadChest


def test_padchest_views_and_skips(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = tiny_padchest(tmp_path)
    with caplog.at_level(logging.WARNING):
        records = read_padchest(root)
    assert [(r.study_id, r.image_id, r.view) for r in records] == [
        ("s1", "s1_ap.png", "frontal"),
        ("s2", "s2_l.png", "lateral"),
        ("s2", "s2_pa.png", "frontal"),
        ("s3", "s3_costal.png", "other"),
    ]
    assert records[0].path == root / "s1_ap.png"
    assert records[1].path == root / "0" / "s2_l.png"
    assert "'EXCLUDE': 1" in caplog.text and "'UNK': 1" in caplog.text
    assert "skipped 1 image(s) missing" in caplog.text
    image = load_image(records[1])
    assert image.dtype == np.float32 and image.max() == pytest.approx(1.0)


def test_padchest_csv_discovery(tmp_path: Path) -> None:
    images = [
        PadchestImage("a.png", "s1", "PA", image_dir="7.0", write_file=False),
        PadchestImage("b.png", "s1", "L", image_dir="7"),
    ]
    root = build_padchest(tmp_path / "one", images, csv_name="subset.csv")
    write_png(root / "7" / "a.png", gradient_pixels(bits=16))  # pandas wrote ImageDir 7 as "7.0"
    assert detect_format(root) == "padchest"
    assert [r.path for r in read_dataset(root)] == [root / "7" / "a.png", root / "7" / "b.png"]
    (root / "other.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"exactly one \*\.csv, found \['other\.csv', 'subset\.csv'\]"):
        read_padchest(root)
    assert len(read_padchest(root, csv_path=root / "subset.csv")) == 2


def test_padchest_duplicate_image_id(tmp_path: Path) -> None:
    root = build_padchest(tmp_path, [PadchestImage("a.png", "s1", "PA"), PadchestImage("a.png", "s2", "L")])
    with pytest.raises(ValueError, match=r"line 3: column 'ImageID' value 'a\.png' repeats the image of line 2"):
        read_padchest(root)


# --------------------------------------------------------------------------- dispatcher, CSV, CLI


@pytest.mark.parametrize(
    ("builder", "name"),
    [(tiny_siim, "siim"), (tiny_rsna, "rsna"), (tiny_padchest, "padchest"),
     (lambda root: build_lung_masks(root, variant="montgomery"), "lungmasks")],
)  # fmt: skip
def test_auto_detection(tmp_path: Path, builder, name: str) -> None:
    root = builder(tmp_path)
    assert detect_format(root) == name
    records = read_dataset(root)
    assert records and records == read_dataset(root, format=name)
    assert records == sorted(records, key=lambda r: (r.study_id or "", r.image_id))


def test_unknown_layout_error(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "a.csv").write_text("x,y\n")
    (tmp_path / "b.csv").write_text("x,y\n")
    with pytest.raises(ValueError) as info:
        read_dataset(tmp_path)
    message = str(info.value)
    for fragment in (str(tmp_path), "train_image_level.csv", "stage_2_train_labels.csv", "PADCHEST", "CXR_png"):
        assert fragment in message
    with pytest.raises(ValueError, match="format must be 'auto' or one of"):
        read_dataset(tmp_path, format="chexpert")
    with pytest.raises(ValueError, match="is not a directory"):
        read_dataset(tmp_path / "absent")


def test_csv_rows_extra_cells_and_missing_columns(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text("a, b \n1,2\n\n3,4,,\n5,6,7\n", encoding="utf-8")
    rows = read_rows(path, required=("a", "b"))
    assert next(rows).cells == {"a": "1", "b": "2"}
    third = next(rows)
    assert (third.line, third.cells) == (4, {"a": "3", "b": "4"})
    with pytest.raises(ValueError, match=r"t\.csv, line 5: 3 cells but the header has 2"):
        next(rows)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['c'\]; found columns \['a', 'b'\]"):
        next(read_rows(path, required=("a", "c")))


def test_summary_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tiny_siim(tmp_path, phantom=True)
    summary = main(get_args_parser().parse_args(["--data", str(root)]))
    assert summary.images == 4 and summary.studies == 3
    assert summary.views == {"frontal": 2, "lateral": 1, "other": 1}
    assert (summary.box_annotated, summary.with_opacity_boxes, summary.boxes) == (2, 1, 2)
    assert (summary.lung_masks, summary.opacity_masks) == (2, 2)
    assert summary.study_labels == {"negative": 1, "typical": 1}
    assert json.loads(capsys.readouterr().out)["images"] == 4
