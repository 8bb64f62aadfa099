"""Cross-study batching: Analyzer.analyze_studies against one study at a time, and the StudyBatcher's logic."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch

from cxr_models.datasets import load_image
from cxr_models.datasets.sources import as_sources, read_sources
from cxr_models.devices import to_device
from cxr_models.evaluation.evaluate import reporting_threshold_of
from cxr_models.evaluation.metrics import boxes_at_threshold
from cxr_models.inference.batching import BatchOptions, StudyBatcher
from cxr_models.inference.pipeline import Analyzer, StudyPrediction

# --- the real pipeline ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped() -> Analyzer:
    return Analyzer.load(device="cpu")


@pytest.fixture(scope="module")
def studies(phantom_small: Path) -> list[list[np.ndarray]]:
    """The phantom studies with all their images (frontal, lateral, not a chest), in study order."""
    grouped: dict[str, list[np.ndarray]] = {}
    for record in read_sources(as_sources([f"{phantom_small},name=phantom"])):
        grouped.setdefault(str(record.study_id), []).append(load_image(record))
    return [grouped[key] for key in sorted(grouped)][:5]


def _assert_same_prediction(batched: StudyPrediction, alone: StudyPrediction, *, threshold: float) -> None:
    assert batched.label == alone.label
    assert (batched.probabilities is None) == (alone.probabilities is None)
    if alone.probabilities is not None:
        for name, p in alone.probabilities.items():
            assert batched.probabilities[name] == pytest.approx(p, abs=1e-3)
    assert len(batched.images) == len(alone.images)
    for b, a in zip(batched.images, alone.images, strict=True):
        assert (b.view, b.analysed, b.reason, b.lung_box) == (a.view, a.analysed, a.reason, a.lung_box)
        if not a.analysed:
            continue
        kept_b, kept_a = boxes_at_threshold(b.opacities, threshold), boxes_at_threshold(a.opacities, threshold)
        assert len(kept_b) == len(kept_a)
        for sb, sa in zip(kept_b, kept_a, strict=True):
            assert sb.box.as_list() == pytest.approx(sa.box.as_list(), abs=0.01)
        assert [s.score for s in kept_b] == pytest.approx([s.score for s in kept_a], abs=1e-3)
        assert b.opacity_percent == pytest.approx(a.opacity_percent, abs=0.05)
        assert np.array_equal(b.lung_mask, a.lung_mask)


def test_studies_analysed_together_match_each_analysed_alone(shipped: Analyzer, studies) -> None:
    assert len(studies) >= 3 and sum(len(s) for s in studies) > len(studies)
    together = shipped.analyze_studies(studies)
    threshold = reporting_threshold_of(shipped.manifest)
    assert len(together) == len(studies)
    for batched, images in zip(together, studies, strict=True):
        _assert_same_prediction(batched, shipped.analyze_study(images), threshold=threshold)
    assert any(not image.analysed for p in together for image in p.images), "the studies should include a lateral or a non-chest"


def test_each_study_gets_its_share_of_the_batch_time(shipped: Analyzer, studies) -> None:
    together = shipped.analyze_studies(studies[:3])
    for stage in ("view", "lungs", "detection", "opacity", "study"):
        shares = [p.timings_ms.get(stage, 0.0) for p in together]
        assert sum(shares) > 0.0, stage
    views = [len(images) for images in studies[:3]]
    view_ms = [p.timings_ms["view"] for p in together]
    # Shares are proportional to the images each study put into the stage.
    assert view_ms[0] / views[0] == pytest.approx(view_ms[1] / views[1], rel=1e-6)


def test_a_bad_image_is_named_by_study_and_index(shipped: Analyzer, studies) -> None:
    with pytest.raises(ValueError, match=r"studies\[1\]\[0\] must be a 2-D display array"):
        shipped.analyze_studies([studies[0], [np.zeros((4, 4, 3), np.float32)]])
    assert shipped.analyze_studies([]) == []
    empty = shipped.analyze_studies([[]])[0]
    assert empty.label is None and empty.images == ()


def test_half_precision_keeps_the_reported_findings(shipped: Analyzer, studies) -> None:
    """Float16 autocast (run here on the CPU, meant for a GPU) moves scores by well under the
    reporting margin; the view, the analysed images and the study label stay the same."""
    half = Analyzer(
        view=shipped.view, lungs=shipped.lungs, detection=shipped.detection, opacity=shipped.opacity,
        study=shipped.study, manifest=shipped.manifest, device=shipped.device, ood=shipped.ood,
        crop_fallback=shipped.crop_fallback, half_precision=True,
    )  # fmt: skip
    for images in studies[:3]:
        a, h = shipped.analyze_study(images), half.analyze_study(images)
        assert h.label == a.label
        for name, p in a.probabilities.items():
            assert h.probabilities[name] == pytest.approx(p, abs=0.02)
        for ih, ia in zip(h.images, a.images, strict=True):
            assert (ih.view, ih.analysed) == (ia.view, ia.analysed)
            if ia.analysed:
                assert ih.opacity_percent == pytest.approx(ia.opacity_percent, abs=1.0)
                assert np.mean(ih.lung_mask == ia.lung_mask) > 0.995


def test_to_device_on_the_cpu_is_a_plain_copy_or_the_same_tensor() -> None:
    tensor = torch.arange(6, dtype=torch.float32)
    moved = to_device(tensor, torch.device("cpu"))
    assert torch.equal(moved, tensor) and not moved.is_pinned()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_to_device_on_a_gpu_goes_through_pinned_memory() -> None:  # pragma: no cover - CPU CI
    tensor = torch.arange(6, dtype=torch.float32)
    moved = to_device(tensor, torch.device("cuda"))
    assert moved.is_cuda and torch.equal(moved.cpu(), tensor)


# --- the batcher's logic, against a fake analyser ---------------------------------------------------


class FakeAnalyzer:
    """Answers each study with its first pixel as the label; a study whose first pixel is negative raises."""

    manifest: dict = {"version": "fake"}

    def __init__(self, *, hold: threading.Event | None = None) -> None:
        self.batches: list[tuple[list[int], BatchOptions]] = []
        self.hold = hold
        self.started = threading.Event()

    def analyze_studies(self, studies: Sequence[Sequence[np.ndarray]], **options) -> list[StudyPrediction]:  # noqa: ANN003
        self.started.set()
        if self.hold is not None:
            self.hold.wait(10)
        self.batches.append(([len(s) for s in studies], BatchOptions(**options)))
        if any(float(s[0][0, 0]) < 0 for s in studies):
            raise ValueError("a bad study")
        return [StudyPrediction(label=str(int(s[0][0, 0])), probabilities=None, images=()) for s in studies]


def _study(value: int, images: int = 1) -> list[np.ndarray]:
    return [np.full((2, 2), float(value), np.float32) for _ in range(images)]


def _call_all(batcher: StudyBatcher, studies: list[list[np.ndarray]], **options) -> list[object]:  # noqa: ANN003
    results: list[object] = [None] * len(studies)

    def call(i: int) -> None:
        try:
            results[i] = batcher.analyze_study(studies[i], **options)
        except Exception as exc:  # noqa: BLE001 - the test inspects what each caller got
            results[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(studies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(20)
    return results


def test_concurrent_studies_share_one_batch_up_to_max_images() -> None:
    fake = FakeAnalyzer()
    batcher = StudyBatcher(fake, max_images=3, max_wait_ms=5_000)
    results = _call_all(batcher, [_study(1), _study(2), _study(3)])
    batcher.close()
    assert sorted(r.label for r in results) == ["1", "2", "3"]
    assert [r.label for r in results] == ["1", "2", "3"], "each caller gets its own study's prediction"
    assert [sizes for sizes, _ in fake.batches] == [[1, 1, 1]], "three one-image studies, max_images 3: one batch"
    assert batcher.history[-1].studies == 3 and batcher.history[-1].images == 3


def test_a_batch_never_exceeds_max_images_and_a_large_study_runs_alone() -> None:
    hold = threading.Event()
    fake = FakeAnalyzer(hold=hold)
    batcher = StudyBatcher(fake, max_images=4, max_wait_ms=200)
    first = threading.Thread(target=batcher.analyze_study, args=(_study(9, images=6),))
    first.start()
    assert fake.started.wait(10)
    # While the 6-image study (over the limit, so alone) runs, five 2-image studies queue up.
    waiting = threading.Thread(target=lambda: _call_all(batcher, [_study(i, images=2) for i in range(5)]))
    waiting.start()
    while batcher._pending.qsize() < 5:  # noqa: SLF001 - wait until every request is queued
        threading.Event().wait(0.01)
    hold.set()
    first.join(20)
    waiting.join(20)
    batcher.close()
    sizes = [sizes for sizes, _ in fake.batches]
    assert sizes[0] == [6]
    assert all(sum(s) <= 4 for s in sizes[1:]) and sum(len(s) for s in sizes[1:]) == 5
    assert [2, 2] in sizes[1:], "queued studies are gathered into one batch"


def test_studies_with_other_options_are_not_mixed() -> None:
    fake = FakeAnalyzer()
    batcher = StudyBatcher(fake, max_images=8, max_wait_ms=300)
    plain = threading.Thread(target=lambda: _call_all(batcher, [_study(1), _study(2)]))
    attributed = threading.Thread(target=lambda: _call_all(batcher, [_study(3)], attribution="abnormal"))
    plain.start()
    attributed.start()
    plain.join(20)
    attributed.join(20)
    batcher.close()
    for sizes, options in fake.batches:
        assert options in (BatchOptions(), BatchOptions(attribution="abnormal"))
    assert sum(len(s) for s, o in fake.batches if o.attribution == "abnormal") == 1
    assert sum(len(s) for s, o in fake.batches if o.attribution is None) == 2


def test_a_bad_study_fails_alone_and_the_others_get_their_results() -> None:
    fake = FakeAnalyzer()
    batcher = StudyBatcher(fake, max_images=3, max_wait_ms=5_000)
    results = _call_all(batcher, [_study(1), _study(-1), _study(3)])
    batcher.close()
    assert results[0].label == "1" and results[2].label == "3"
    assert isinstance(results[1], ValueError) and "a bad study" in str(results[1])
    assert batcher.history[0].fell_back and batcher.history[0].studies == 3
    assert [sizes for sizes, _ in fake.batches][1:] == [[1], [1], [1]], "retried one study at a time"


def test_a_closed_batcher_refuses_new_studies() -> None:
    batcher = StudyBatcher(FakeAnalyzer(), max_images=2, max_wait_ms=0)
    assert batcher.analyze_study(_study(5)).label == "5"
    batcher.close()
    batcher.close()
    with pytest.raises(RuntimeError, match="closed"):
        batcher.analyze_study(_study(6))


@pytest.mark.parametrize(("keyword", "value"), [("max_images", 0), ("max_wait_ms", -1.0)])
def test_bad_batcher_settings_are_refused_by_name(keyword: str, value: float) -> None:
    settings = {"max_images": 2, "max_wait_ms": 10.0, keyword: value}
    with pytest.raises(ValueError, match=keyword):
        StudyBatcher(FakeAnalyzer(), **settings)
