"""Attribution of the study classifier (cxr_models.inference.attribution): Integrated Gradients
and Grad-CAM on the shipped weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cxr_models.inference.attribution import (
    attribute,
    grad_cam,
    grad_cam_cells,
    integrated_gradients_cells,
    resolve_target,
    target_probability,
    target_score,
)
from cxr_models.inference.study import StudyClassifier, StudyImageInput, crop_channels, network_input
from cxr_models.records import STUDY_LABELS, Box
from cxr_models.weights import load_state_dict

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def classifier() -> StudyClassifier:
    return StudyClassifier.from_state_dict(load_state_dict("study"), device=CPU)


def _item(seed: int, *, shape: tuple[int, int] = (300, 260), crop: Box = Box(20.0, 30.0, 240.0, 280.0)) -> StudyImageInput:
    rng = np.random.default_rng(seed)
    rows, cols = shape
    yy, xx = np.mgrid[0:rows, 0:cols]
    image = (0.4 + 0.2 * rng.random(shape)).astype(np.float32)
    lungs = ((np.abs(xx - cols * 0.3) < cols * 0.15) | (np.abs(xx - cols * 0.7) < cols * 0.15)) & (np.abs(yy - rows * 0.5) < rows * 0.3)
    # A dense opacity in the right half of the left lung field.
    blob = np.exp(-(((xx - cols * 0.3) / 15.0) ** 2 + ((yy - rows * 0.6) / 20.0) ** 2)).astype(np.float32)
    image = np.clip(image + 0.4 * blob, 0, 1)
    return StudyImageInput(image=image, lung_mask=lungs, opacity_probability=np.clip(3.0 * blob, 0, 1) * lungs, crop=crop)


def test_abnormal_score_is_the_logit_of_one_minus_p_negative() -> None:
    logits = torch.tensor([[0.3, -1.0, 2.0, 0.5]])
    assert resolve_target(logits, target="abnormal") == "abnormal"
    score = target_score(logits, "abnormal")
    p_negative = torch.softmax(logits, dim=1)[0, STUDY_LABELS.index("negative")]
    assert float(score[0]) == pytest.approx(float(torch.log((1 - p_negative) / p_negative)), abs=1e-5)
    assert target_probability(logits, "abnormal") == pytest.approx(float(1 - p_negative), abs=1e-6)
    name = resolve_target(logits, target="predicted")
    assert name == STUDY_LABELS[2] and float(target_score(logits, name)[0]) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="target must be one of"):
        resolve_target(logits, target="lungs")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="name must be"):
        target_score(logits, "lungs")


def test_grad_cam_at_the_last_block_is_the_class_activation_map(classifier: StudyClassifier) -> None:
    """Global average pool + linear head: Grad-CAM of a class logit = ReLU(sum_c w_c A_c) / (h w)."""
    model = classifier.model
    item = _item(1)
    x = network_input(torch.from_numpy(crop_channels(item))[None])
    cells, name, _ = grad_cam_cells(model, x, layer=model.trunk.blocks[-1], target="predicted")
    with torch.no_grad():
        features = model.trunk.blocks(model.trunk.stem(x))[0]
    k = STUDY_LABELS.index(name)
    weights = model.head.weight[k].detach()
    expected = torch.relu((weights[:, None, None] * features).sum(0)) / (features.shape[1] * features.shape[2])
    assert cells.shape == (1, 4, 4)
    np.testing.assert_allclose(cells[0], expected.numpy(), rtol=1e-4, atol=1e-6)


def test_integrated_gradients_are_complete(classifier: StudyClassifier) -> None:
    """The attributions sum to S(input) - S(baseline), up to the midpoint rule's error, which
    shrinks as the path gets more points."""
    channels = torch.from_numpy(np.stack([crop_channels(_item(4)), crop_channels(_item(5))]))
    errors = []
    for steps in (4, 64):
        cells, name, probability, difference = integrated_gradients_cells(classifier.model, channels, target="abnormal", steps=steps)
        assert cells.shape == (2, 128, 128) and name == "abnormal" and 0.0 <= probability <= 1.0
        assert abs(difference) > 0.1, "the input and the all-zero baseline score differently"
        errors.append(abs(float(cells.sum()) - difference))
    assert errors[1] <= 0.05 * abs(difference), errors
    assert errors[1] < errors[0] or errors[0] <= 0.01 * abs(difference), errors
    with pytest.raises(ValueError, match="steps must be >= 1"):
        integrated_gradients_cells(classifier.model, channels, target="abnormal", steps=0)


@pytest.mark.parametrize("method", ["integrated_gradients", "grad_cam"])
def test_maps_are_in_the_original_grid_and_zero_outside_the_crop(classifier: StudyClassifier, method: str) -> None:
    study = [_item(2), _item(3, shape=(280, 300), crop=Box(10.0, 10.0, 290.0, 250.0))]
    result = attribute(classifier, study, method=method)  # type: ignore[arg-type]
    assert result.method == method and result.target == "abnormal" and 0.0 <= result.probability <= 1.0
    assert (result.completeness_error is None) == (method == "grad_cam")
    assert [m.shape for m in result.maps] == [(300, 260), (280, 300)]
    for m, item in zip(result.maps, study, strict=True):
        assert m.dtype == np.float32 and m.min() >= 0.0 and m.max() <= 1.0 + 1e-6
        x0, y0, x1, y1 = (int(v) for v in item.crop.as_list())
        outside = np.ones(m.shape, dtype=bool)
        outside[y0:y1, x0:x1] = False
        assert not m[outside].any()
    # One scale per study: the larger of the two maps reaches 1.
    assert max(float(m.max()) for m in result.maps) == pytest.approx(1.0, abs=1e-5)
    scaled = result.scaled()
    assert max(float(m.max()) for m in scaled) == pytest.approx(result.probability, abs=1e-5)
    again = attribute(classifier, study, method=method)  # type: ignore[arg-type]
    for a, b in zip(result.maps, again.maps, strict=True):
        np.testing.assert_array_equal(a, b)


def test_attribution_needs_an_image_and_a_known_method(classifier: StudyClassifier) -> None:
    with pytest.raises(ValueError, match="at least one frontal image"):
        grad_cam(classifier, [])
    with pytest.raises(ValueError, match="method must be one of"):
        attribute(classifier, [_item(1)], method="saliency")  # type: ignore[arg-type]
