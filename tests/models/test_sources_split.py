"""Several data sources, the shared patient-disjoint split, weighted sampling and the real-label training targets."""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr_models.datasets.sources import DataSource, as_sources, describe, parse_source, read_sources, source_argument
from cxr_models.records import STUDY_LABELS, Box, ImageRecord
from cxr_models.train.data import (
    in_validation,
    patient_of,
    sample_weights,
    select_split,
    split_records,
)
from cxr_models.train.engine import epoch_batches
from cxr_models.train.opacity import box_mask, opacity_target
from cxr_models.train.study import NOT_NEGATIVE, group_studies, label_code, partial_label_loss


def _record(image: str, *, patient: str | None = None, study: str | None = None, source: str = "s", **kw) -> ImageRecord:
    return ImageRecord(image_id=image, path=Path(f"/nowhere/{image}.png"), patient_id=patient, study_id=study,
                       source=source, **kw)


# --------------------------------------------------------------------------- sources


def test_source_spec_round_trips_and_names_bad_options() -> None:
    source = parse_source("../shared/realcxr/chestxray14,format=chestxray14,weight=2.5,name=nih")
    assert source == DataSource(root=Path("../shared/realcxr/chestxray14"), format="chestxray14", weight=2.5, name="nih")
    assert parse_source(source.spec()) == source
    assert parse_source("data/mix").label == "mix" and parse_source("data/mix").weight == 1.0
    with pytest.raises(ValueError, match="weigth=2"):
        parse_source("data/mix,weigth=2")
    with pytest.raises(ValueError, match="not a number"):
        parse_source("data/mix,weight=heavy")
    with pytest.raises(ValueError, match="weight must be >= 0"):
        parse_source("data/mix,weight=-1")
    with pytest.raises(argparse.ArgumentTypeError, match="format=..."):
        source_argument("data/mix,colour=red")
    # --format is the default layout of sources that name none
    assert [s.format for s in as_sources(["a", "b,format=siim"], default_format="rsna")] == ["rsna", "siim"]
    assert describe(as_sources(["a,weight=3"])) == "--data a,weight=3"


def test_read_sources_tags_every_record_with_its_source_and_weight(phantom_small: Path, tmp_path: Path) -> None:
    records = read_sources([parse_source(f"{phantom_small},weight=3,name=phantom")])
    assert records and {r.source for r in records} == {"phantom"} and {r.weight for r in records} == {3.0}


# --------------------------------------------------------------------------- split


def test_split_is_patient_disjoint_and_does_not_depend_on_selection() -> None:
    # 300 patients with 1-4 images each; images of a patient carry different study ids
    records = [
        _record(f"p{p}_i{i}", patient=f"p{p}", study=f"p{p}_s{i}", abnormal=bool(i % 2))
        for p in range(300) for i in range(1 + p % 4)
    ]
    split = split_records(records, val_fraction=0.2, seed=0)
    train_patients = {r.patient_id for r in split.train}
    val_patients = {r.patient_id for r in split.val}
    assert not train_patients & val_patients
    assert 0.12 < len(val_patients) / 300 < 0.28
    # a trainer that selects only some records sees the same validation patients
    subset = [r for r in records if r.abnormal]
    sub_val = {r.patient_id for r in split_records(subset, val_fraction=0.2, seed=7).val}
    assert sub_val == {r.patient_id for r in subset if r.patient_id in val_patients}
    # select_split agrees with split_records and the parts partition the records
    assert select_split(records, split="val", val_fraction=0.2) == split.val
    assert len(select_split(records, split="train", val_fraction=0.2)) + len(split.val) == len(records)
    assert select_split(records, split="all", val_fraction=0.2) == records
    # the split seed (not the training seed) moves it
    moved = {r.patient_id for r in split_records(records, val_fraction=0.2, seed=0, split_seed=1).val}
    assert moved != val_patients


def test_split_groups_by_patient_then_study_then_image_within_a_source() -> None:
    assert patient_of(_record("a", patient="7", study="x")) == "s|7"
    assert patient_of(_record("a", study="x")) == "s|x"
    assert patient_of(_record("a")) == "s|a"
    # the same patient id in two sources is two people
    a = [_record(f"i{k}", patient=str(k), source="nih") for k in range(200)]
    b = [_record(f"i{k}", patient=str(k), source="covid") for k in range(200)]
    va = [in_validation(r, val_fraction=0.2) for r in a]
    vb = [in_validation(r, val_fraction=0.2) for r in b]
    assert va != vb
    with pytest.raises(ValueError, match="val_fraction"):
        in_validation(a[0], val_fraction=1.0)
    with pytest.raises(ValueError, match="split must be one of"):
        select_split(a, split="test", val_fraction=0.2)


def test_limit_keeps_a_seeded_subset_of_the_training_part_only() -> None:
    records = [_record(f"i{k}", patient=str(k)) for k in range(100)]
    full = split_records(records, val_fraction=0.2, seed=3)
    limited = split_records(records, val_fraction=0.2, seed=3, limit=10)
    assert len(limited.train) == 10 and set(limited.train) <= set(full.train)
    assert limited.val == full.val
    assert split_records(records, val_fraction=0.2, seed=3, limit=10).train == limited.train


# --------------------------------------------------------------------------- weights


def test_weighted_epochs_draw_sources_in_proportion_to_their_weights() -> None:
    records = [_record(f"a{k}", source="real", weight=3.0) for k in range(50)]
    records += [_record(f"b{k}", source="phantom", weight=1.0) for k in range(150)]
    weights = sample_weights(records)
    assert weights is not None
    drawn = Counter()
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        for batch in epoch_batches(len(records), batch_size=16, generator=generator, weights=weights):
            drawn.update("real" if i < 50 else "phantom" for i in batch)
    # 50 x 3 against 150 x 1: half of the draws each
    assert 0.45 < drawn["real"] / sum(drawn.values()) < 0.55
    assert sample_weights([_record("x", weight=2.0), _record("y", weight=2.0)]) is None
    with pytest.raises(ValueError, match="weight 0"):
        sample_weights([_record("x", weight=0.0), _record("y", weight=0.0)])
    with pytest.raises(ValueError, match="3 entries for 4"):
        epoch_batches(4, batch_size=2, generator=torch.Generator(), weights=np.ones(3))
    unweighted = epoch_batches(10, batch_size=4, generator=torch.Generator().manual_seed(0))
    assert sorted(np.concatenate(unweighted).tolist()) == list(range(10))


# --------------------------------------------------------------------------- real labels as training targets


def test_real_abnormal_labels_are_partial_targets_never_siim_classes() -> None:
    negative = STUDY_LABELS.index("negative")
    assert label_code(_record("a", abnormal=False)) == negative
    assert label_code(_record("a", abnormal=True)) == NOT_NEGATIVE
    assert label_code(_record("a", study_label="typical")) == STUDY_LABELS.index("typical")
    with pytest.raises(ValueError, match="neither a study label"):
        label_code(_record("a"))
    # a real study is abnormal when any of its images is
    _, labels = group_studies([_record("a", study="s", abnormal=False), _record("b", study="s", abnormal=True)])
    assert labels.tolist() == [NOT_NEGATIVE]
    with pytest.raises(ValueError, match="conflicting"):
        group_studies([_record("a", study="s", study_label="typical"), _record("b", study="s", study_label="atypical")])


def test_partial_label_loss_only_asks_that_an_abnormal_study_is_not_negative() -> None:
    negative = STUDY_LABELS.index("negative")
    logits = torch.tensor([[4.0, 0.0, 0.0, 0.0], [-4.0, 3.0, 0.0, 0.0], [-4.0, 0.0, 0.0, 3.0]], dtype=torch.float64)
    codes = torch.tensor([NOT_NEGATIVE, NOT_NEGATIVE, NOT_NEGATIVE])
    per_row = [float(partial_label_loss(logits[i : i + 1], codes[i : i + 1])) for i in range(3)]
    p_negative = torch.softmax(logits, dim=1)[:, negative]
    assert per_row == pytest.approx((-torch.log(1 - p_negative)).tolist(), rel=1e-5)
    # which abnormal class the model prefers does not matter
    assert per_row[1] == pytest.approx(per_row[2], rel=1e-5) and per_row[0] > 10 * per_row[1]
    # known classes are plain cross-entropy, and the batch loss averages both kinds
    known = torch.tensor([STUDY_LABELS.index("typical")])
    assert float(partial_label_loss(logits[1:2], known)) == pytest.approx(
        float(torch.nn.functional.cross_entropy(logits[1:2], known)), rel=1e-5
    )
    mixed = float(partial_label_loss(logits[:2], torch.tensor([NOT_NEGATIVE, int(known)])))
    assert mixed == pytest.approx((per_row[0] + float(torch.nn.functional.cross_entropy(logits[1:2], known))) / 2, rel=1e-5)


def test_opacity_target_from_boxes_is_clipped_to_the_lungs() -> None:
    lungs = np.zeros((40, 60), dtype=bool)
    lungs[5:35, 5:25] = True
    lungs[5:35, 35:55] = True
    positive = _record("p", boxes=(Box(10.0, 10.0, 45.0, 20.0),))
    target = opacity_target(positive, lungs=lungs)
    assert target.sum() == (box_mask(positive.boxes, shape=lungs.shape) & lungs).sum() == 10 * (15 + 10)
    assert not (target & ~lungs).any()
    assert not opacity_target(_record("n", boxes=()), lungs=lungs).any()
    with pytest.raises(ValueError, match="neither an opacity mask nor boxes"):
        opacity_target(_record("u"), lungs=lungs)


def test_lung_mask_source_prefers_the_records_mask_and_predicts_the_rest(phantom_small: Path) -> None:
    from cxr_models.datasets import load_image, read_dataset
    from cxr_models.train.lung_source import LungMaskSource
    from cxr_models.weights import default_weights_dir

    record = next(r for r in read_dataset(phantom_small) if r.view == "frontal" and r.lung_mask)
    image = load_image(record)
    own_only = LungMaskSource(weights=None)
    predicting = LungMaskSource(weights=default_weights_dir() / "lungs.pt")
    assert own_only.digest is None and predicting.digest is not None
    assert (predicting.mask(record, image) == own_only.mask(record, image)).all()
    unmasked = ImageRecord(image_id=record.image_id, path=record.path, view="frontal")
    assert not own_only.available(unmasked) and own_only.mask(unmasked, image) is None
    predicted = predicting.mask(unmasked, image)
    assert predicting.available(unmasked) and predicted.shape == image.shape
    truth = own_only.mask(record, image)
    assert 2 * (predicted & truth).sum() / (predicted.sum() + truth.sum()) > 0.8
