"""The engine with cross-study batching (CXR_BATCH_MAX_IMAGES > 1): concurrent studies analysed
together give each caller the result the lock-serialised engine gives, and a rejected or
unanalysable study among them changes nothing for the others."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cxr_models.inference.batching import StudyBatcher

from cxr_service.analysis import AnalysedStudy
from cxr_service.engine import AnalysisEngine, LazyEngine
from cxr_service.ingest import ingest_file
from cxr_service.settings import Settings
from tests.corpus import REFERENCE_CASE, CorpusCase, build_corpus

CASES = (REFERENCE_CASE, "monochrome1", "bits_stored_10", "no_pixel_data", "rescale_slope_intercept")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CorpusCase]:
    return {case.name: case for case in build_corpus(tmp_path_factory.mktemp("corpus"), seed=3)}


@pytest.fixture(scope="module")
def engines() -> Iterator[tuple[AnalysisEngine, AnalysisEngine]]:
    plain = AnalysisEngine.create(weights_dir=None, device="cpu", min_score=None, max_pixels=64_000_000)
    batcher = StudyBatcher(plain.analyzer, max_images=3, max_wait_ms=3_000)
    batched = AnalysisEngine(plain.analyzer, min_score=plain.min_score, limits=plain.limits, batcher=batcher)
    yield plain, batched
    batched.close()


def _analyse(engine: AnalysisEngine, case: CorpusCase, index: int) -> AnalysedStudy:
    item = ingest_file(case.path, limits=engine.limits)
    # Each case is its own study here, so the batcher sees several studies at once.
    return engine.analyze([item], study_instance_uid=f"2.25.{1000 + index}")


def test_concurrent_studies_in_batches_match_the_serialised_engine(engines, corpus) -> None:
    plain, batched = engines
    cases = [corpus[name] for name in CASES]
    expected = [_analyse(plain, case, i) for i, case in enumerate(cases)]
    got: list[AnalysedStudy | BaseException | None] = [None] * len(cases)

    def run(i: int) -> None:
        try:
            got[i] = _analyse(batched, cases[i], i)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            got[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(cases))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert all(isinstance(g, AnalysedStudy) for g in got), got
    assert any(record.studies > 1 for record in batched.batcher.history), batched.batcher.history
    assert all(record.images <= 3 for record in batched.batcher.history)
    threshold = plain.min_score
    for g, e in zip(got, expected, strict=True):
        assert g.result.study_label == e.result.study_label
        if e.result.study_probabilities is not None:
            for name, p in e.result.study_probabilities.items():
                assert g.result.study_probabilities[name] == pytest.approx(p, abs=1e-3)
        for gi, ei in zip(g.result.images, e.result.images, strict=True):
            assert (gi.sop_instance_uid, gi.view, gi.analysed, gi.reason) == (ei.sop_instance_uid, ei.view, ei.analysed, ei.reason)
            reported_g = [o for o in gi.opacities if o.score >= threshold]
            reported_e = [o for o in ei.opacities if o.score >= threshold]
            assert len(reported_g) == len(reported_e)
            for og, oe in zip(reported_g, reported_e, strict=True):
                assert og.box.as_list() == pytest.approx(oe.box.as_list(), abs=0.01)
    rejected = got[CASES.index("no_pixel_data")]
    assert not rejected.result.images[0].analysed and "no pixel data" in rejected.result.images[0].reason


def test_settings_turn_batching_on_only_above_one_image(tmp_path: Path) -> None:
    off = Settings(environment="development", data_dir=tmp_path, device="cpu")
    assert off.batch_max_images == 1 and off.half_precision is False
    on = Settings(environment="development", data_dir=tmp_path, device="cpu", batch_max_images=16, batch_max_wait_ms=5)
    engine = LazyEngine(on).get()
    try:
        assert isinstance(engine.batcher, StudyBatcher)
        assert engine.batcher.max_images == 16 and engine.batcher.max_wait_ms == 5.0
        assert engine.batcher.analyzer is engine.analyzer
    finally:
        engine.close()
    with pytest.raises(ValueError, match="batch_max_images"):
        Settings(environment="development", data_dir=tmp_path, batch_max_images=0)


def test_a_batcher_must_wrap_the_engines_own_analyzer(engines) -> None:
    plain, _ = engines
    other = StudyBatcher(object(), max_images=2, max_wait_ms=0)  # type: ignore[arg-type] - never run
    with pytest.raises(ValueError, match="batcher"):
        AnalysisEngine(plain.analyzer, min_score=0.3, limits=plain.limits, batcher=other)
