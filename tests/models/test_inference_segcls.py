"""Inference stages of the view, lung, opacity and study models: shapes, coordinates, fp16 loading, budgets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from cxr_models.datasets import load_image, read_dataset
from cxr_models.inference.crop import decide_crop
from cxr_models.inference.lungs import LungPrediction, LungSegmenter, clean_lung_mask
from cxr_models.inference.opacity import OpacityPrediction, OpacitySegmenter, opacity_percent
from cxr_models.inference.study import StudyClassifier, StudyImageInput, StudyPrediction, coordinate_channels
from cxr_models.inference.view import ViewClassifier, ViewPrediction
from cxr_models.nets.common import fp16_nbytes, fp16_state_dict
from cxr_models.nets.lungs import build_lungs
from cxr_models.nets.opacity import build_opacity
from cxr_models.nets.study import build_study
from cxr_models.nets.view import build_view
from cxr_models.records import STUDY_LABELS, VIEWS, Box

CPU = torch.device("cpu")
MB = 1_000_000
BUDGETS = {build_view: 2 * MB, build_lungs: 8 * MB, build_opacity: 10 * MB, build_study: 2 * MB}


def _fp16(build) -> dict[str, torch.Tensor]:  # noqa: ANN001 - a build_* function
    torch.manual_seed(0)
    model = build()
    # Non-trivial batch-norm statistics so eval mode differs from an identity normalisation.
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return fp16_state_dict(model)


@pytest.fixture(scope="module")
def frontal_images(phantom_small: Path) -> list[np.ndarray]:
    records = [r for r in read_dataset(phantom_small) if r.view == "frontal"][:3]
    return [load_image(r) for r in records]


@pytest.mark.parametrize("build", list(BUDGETS), ids=lambda b: b.__name__)
def test_fp16_weights_within_budget(build) -> None:  # noqa: ANN001
    model = build()
    size = fp16_nbytes(model)
    assert size <= BUDGETS[build]
    state = fp16_state_dict(model)
    assert sum(2 * v.numel() for v in state.values() if v.is_floating_point()) == size
    assert all(v.dtype == torch.float16 for v in state.values() if v.is_floating_point())


def test_build_functions_match_their_state_dicts() -> None:
    for build in BUDGETS:
        fresh = build()
        fresh.load_state_dict(build().state_dict())  # a state dict is all that is needed to load


def test_view_classifier(frontal_images: list[np.ndarray]) -> None:
    classifier = ViewClassifier.from_state_dict(_fp16(build_view), device=CPU)
    images = [*frontal_images, np.random.default_rng(0).random((77, 131), dtype=np.float32)]
    predictions = classifier.predict(images)
    assert len(predictions) == len(images)
    for p in predictions:
        assert isinstance(p, ViewPrediction) and p.label in VIEWS
        assert list(p.probabilities) == list(VIEWS)
        assert sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        assert p.label == max(p.probabilities, key=p.probabilities.get)
    assert all(isinstance(v, float) for v in predictions[0].probabilities.values())
    single = classifier.predict(images[:1])[0]
    assert single.probabilities == pytest.approx(predictions[0].probabilities, abs=1e-5)
    with pytest.raises(ValueError, match="image"):
        classifier.predict([np.zeros((4, 4, 3), dtype=np.float32)])


def test_fp16_state_loads_close_to_float32(frontal_images: list[np.ndarray]) -> None:
    torch.manual_seed(0)
    model = build_view().eval()
    exact = ViewClassifier(model, device=CPU).predict(frontal_images)
    half = ViewClassifier.from_state_dict(fp16_state_dict(model), device=CPU).predict(frontal_images)
    for a, b in zip(exact, half, strict=True):
        assert a.probabilities == pytest.approx(b.probabilities, abs=1e-2)
    assert all(p.dtype == torch.float32 for p in ViewClassifier.from_state_dict(
        fp16_state_dict(model), device=CPU).model.parameters())  # fmt: skip


def test_lung_segmenter_returns_original_size_masks(frontal_images: list[np.ndarray]) -> None:
    segmenter = LungSegmenter.from_state_dict(_fp16(build_lungs), device=CPU)
    predictions = segmenter.predict(frontal_images)
    assert len(predictions) == len(frontal_images)
    for image, p in zip(frontal_images, predictions, strict=True):
        assert isinstance(p, LungPrediction)
        assert p.mask.dtype == bool and p.mask.shape == image.shape
        assert 0.0 <= p.probability_max <= 1.0


class _BrightIsLung(nn.Module):
    """A stand-in network: logit +20 where the (normalised) input is bright, -20 elsewhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(x > 0, 20.0, -20.0)


def test_lung_masks_map_back_to_original_coordinates() -> None:
    image = np.zeros((300, 500), dtype=np.float32)
    image[60:240, 50:200] = 1.0
    image[60:240, 300:450] = 1.0
    image[150:160, 100:110] = 0.0  # a hole inside the left region
    mask = LungSegmenter(_BrightIsLung(), device=CPU).predict([image])[0].mask
    expected = image > 0.5
    expected[150:160, 100:110] = True
    disagreement = np.count_nonzero(mask != expected) / expected.sum()
    assert disagreement < 0.03
    assert mask[155, 105], "holes are filled"


def test_clean_lung_mask_keeps_two_largest_and_fills_holes() -> None:
    mask = np.zeros((100, 100), dtype=bool)
    mask[10:90, 5:40] = True  # 2800 px
    mask[10:80, 60:95] = True  # 2450 px
    mask[92:98, 45:55] = True  # 60 px, a third component
    mask[40:45, 20:25] = False  # a hole
    cleaned = clean_lung_mask(mask)
    assert not cleaned[95, 50]
    assert cleaned[42, 22]
    assert cleaned.sum() == 2800 + 2450


class _Constant(nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x[:, :1], self.value)


def test_opacity_segmenter_pastes_into_the_crop() -> None:
    image = np.random.default_rng(1).random((200, 300), dtype=np.float32)
    lungs = np.zeros((200, 300), dtype=bool)
    lungs[50:150, 40:240] = True  # 20000 px
    crop = Box(100.0, 20.0, 260.0, 180.0)
    segmenter = OpacitySegmenter(_Constant(10.0), device=CPU)
    prediction = segmenter.predict([image], crops=[crop], lung_masks=[lungs])[0]
    assert isinstance(prediction, OpacityPrediction)
    assert prediction.probability.dtype == np.float32 and prediction.probability.shape == image.shape
    inside = np.zeros(image.shape, dtype=bool)
    inside[20:180, 100:260] = True
    assert np.all(prediction.probability[~inside] == 0.0)
    assert np.all(prediction.probability[inside] > 0.99)
    assert np.array_equal(prediction.mask, inside)
    # lungs inside the crop: rows 50..149, columns 100..239 = 14000 of 20000 px
    assert prediction.percent == pytest.approx(70.0)


def test_opacity_segmenter_real_network(frontal_images: list[np.ndarray]) -> None:
    segmenter = OpacitySegmenter.from_state_dict(_fp16(build_opacity), device=CPU)
    lungs = [np.zeros(i.shape, dtype=bool) for i in frontal_images]
    for m in lungs:
        m[m.shape[0] // 4 : 3 * m.shape[0] // 4, m.shape[1] // 8 : 7 * m.shape[1] // 8] = True
    crops = [decide_crop(m, shape=m.shape).box for m in lungs]
    predictions = segmenter.predict(frontal_images, crops=crops, lung_masks=lungs)
    for image, lung, p in zip(frontal_images, lungs, predictions, strict=True):
        assert p.probability.shape == image.shape and p.mask.shape == image.shape and p.mask.dtype == bool
        assert p.probability.dtype == np.float32
        assert 0.0 <= p.percent <= 100.0
        assert p.percent == pytest.approx(opacity_percent(p.mask, lung))


def test_opacity_segmenter_checks_its_arguments() -> None:
    segmenter = OpacitySegmenter(_Constant(0.0), device=CPU)
    image = np.zeros((40, 40), dtype=np.float32)
    box = Box(0.0, 0.0, 40.0, 40.0)
    with pytest.raises(ValueError, match="same length"):
        segmenter.predict([image, image], crops=[box], lung_masks=[image > 0, image > 0])
    with pytest.raises(ValueError, match=r"lung_masks\[0\]"):
        segmenter.predict([image], crops=[box], lung_masks=[np.zeros((20, 40), dtype=bool)])


def test_opacity_percent_by_hand() -> None:
    lungs = np.zeros((10, 10), dtype=bool)
    lungs[:, :5] = True
    mask = np.zeros((10, 10), dtype=bool)
    mask[:2, :] = True  # 10 of 50 lung pixels, plus 10 outside
    assert opacity_percent(mask, lungs) == pytest.approx(20.0)
    assert opacity_percent(mask, np.zeros_like(lungs)) == 0.0


def _study_inputs(images: list[np.ndarray]) -> list[StudyImageInput]:
    items = []
    for k, image in enumerate(images):
        lungs = np.zeros(image.shape, dtype=bool)
        lungs[image.shape[0] // 5 : 4 * image.shape[0] // 5, image.shape[1] // 6 : 5 * image.shape[1] // 6] = True
        probability = np.zeros(image.shape, dtype=np.float32)
        probability[image.shape[0] // 2 :, : image.shape[1] // (2 + k)] = 0.9
        items.append(
            StudyImageInput(image=image, lung_mask=lungs, opacity_probability=probability,
                            crop=decide_crop(lungs, shape=image.shape).box)  # fmt: skip
        )
    return items


def test_study_classifier_pools_each_study(frontal_images: list[np.ndarray]) -> None:
    classifier = StudyClassifier.from_state_dict(_fp16(build_study), device=CPU)
    items = _study_inputs(frontal_images)
    studies = [items[:1], items[1:3]]
    predictions = classifier.predict(studies)
    assert len(predictions) == 2
    for p in predictions:
        assert isinstance(p, StudyPrediction) and p.label in STUDY_LABELS
        assert list(p.probabilities) == list(STUDY_LABELS)
        assert sum(p.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    alone = classifier.predict([items[1:3]])[0]
    assert alone.probabilities == pytest.approx(predictions[1].probabilities, abs=1e-5)
    reordered = classifier.predict([[items[2], items[1]]])[0]
    assert reordered.probabilities == pytest.approx(predictions[1].probabilities, abs=1e-5)
    assert predictions[0].probabilities != pytest.approx(predictions[1].probabilities, abs=1e-6)


def test_study_classifier_rejects_empty_studies(frontal_images: list[np.ndarray]) -> None:
    classifier = StudyClassifier.from_state_dict(_fp16(build_study), device=CPU)
    with pytest.raises(ValueError, match=r"studies\[1\] has no images"):
        classifier.predict([_study_inputs(frontal_images[:1]), []])


def test_coordinate_channels() -> None:
    coords = coordinate_channels(4)
    assert coords.shape == (2, 4, 4)
    assert coords[0, 0].tolist() == pytest.approx([-0.75, -0.25, 0.25, 0.75])
    assert coords[1, :, 0].tolist() == pytest.approx([-0.75, -0.25, 0.25, 0.75])
