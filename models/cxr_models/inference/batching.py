"""Cross-study batching: the studies of several callers analysed together, one model pass per stage.

A worker that runs several jobs at once shares one :class:`StudyBatcher`. Each job's thread calls
:meth:`StudyBatcher.analyze_study` as it would call :meth:`Analyzer.analyze_study`. The batcher's
own thread takes the first waiting study, gathers the studies that arrive within ``max_wait_ms``
of it, up to ``max_images`` images in all, runs :meth:`Analyzer.analyze_studies` on them and
hands each caller its own :class:`StudyPrediction`. Only studies asking for the same options
(ablation, attribution) share a batch. A study with more images than ``max_images`` runs alone.

A batch that raises is run again study by study, so a bad study fails alone and the others get
their results. The models run in the batcher's thread only, one batch at a time: the batcher is
also the lock that keeps concurrent callers off the shared models.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from cxr_models.inference.attribution import Method, Target
from cxr_models.inference.pipeline import StudyPrediction

logger = logging.getLogger(__name__)


class BatchAnalyzer(Protocol):
    """What the batcher needs of an :class:`~cxr_models.inference.pipeline.Analyzer`."""

    manifest: dict[str, Any]

    def analyze_studies(
        self,
        studies: Sequence[Sequence[np.ndarray]],
        *,
        no_crop_ablation: bool = False,
        attribution: Target | None = None,
        attribution_method: Method | None = None,
    ) -> list[StudyPrediction]: ...


@dataclass(frozen=True)
class BatchOptions:
    """The per-call options of :meth:`Analyzer.analyze_studies`; a batch shares one set."""

    no_crop_ablation: bool = False
    attribution: Target | None = None
    attribution_method: Method | None = None

    def as_kwargs(self) -> dict[str, Any]:
        return {
            "no_crop_ablation": self.no_crop_ablation,
            "attribution": self.attribution,
            "attribution_method": self.attribution_method,
        }


@dataclass(frozen=True)
class _Request:
    images: Sequence[np.ndarray]
    options: BatchOptions
    future: Future[StudyPrediction] = field(default_factory=Future)


@dataclass(frozen=True)
class BatchRecord:
    """One batch the batcher ran: how many studies and images, and whether it fell back to singles."""

    studies: int
    images: int
    fell_back: bool


_STOP = object()


class StudyBatcher:
    """Gathers concurrent :meth:`analyze_study` calls into :meth:`Analyzer.analyze_studies` batches."""

    def __init__(self, analyzer: BatchAnalyzer, *, max_images: int, max_wait_ms: float, history: int = 64) -> None:
        if max_images < 1:
            raise ValueError(f"max_images must be >= 1, got {max_images}")
        if not max_wait_ms >= 0.0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.analyzer = analyzer
        self.max_images = max_images
        self.max_wait_ms = float(max_wait_ms)
        self._pending: queue.Queue[Any] = queue.Queue()
        self._start_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._closed = False
        self._history_size = history
        self.history: list[BatchRecord] = []

    @property
    def manifest(self) -> dict[str, Any]:
        return self.analyzer.manifest

    @property
    def device(self) -> Any:
        return getattr(self.analyzer, "device", None)

    def analyze_study(
        self,
        images: Sequence[np.ndarray],
        *,
        no_crop_ablation: bool = False,
        attribution: Target | None = None,
        attribution_method: Method | None = None,
    ) -> StudyPrediction:
        """The study's prediction, computed in a batch with the studies of other callers."""
        request = _Request(
            images=list(images),
            options=BatchOptions(
                no_crop_ablation=no_crop_ablation, attribution=attribution, attribution_method=attribution_method
            ),
        )
        with self._start_lock:
            if self._closed:
                raise RuntimeError("the study batcher is closed")
            if self._thread is None:
                self._thread = threading.Thread(target=self._loop, name="cxr-study-batcher", daemon=True)
                self._thread.start()
            self._pending.put(request)
        return request.future.result()

    def close(self, timeout_s: float | None = None) -> None:
        """Finish the batches already asked for, then stop the batcher's thread."""
        with self._start_lock:
            if self._closed:
                return
            self._closed = True
            thread = self._thread
            self._pending.put(_STOP)
        if thread is not None:
            thread.join(timeout_s)

    # ------------------------------------------------------------------ the batcher's thread

    def _loop(self) -> None:
        carried: Any = None
        stopping = False
        while not stopping:
            first = carried if carried is not None else self._pending.get()
            carried = None
            if first is _STOP:
                break
            batch = [first]
            count = len(first.images)
            deadline = time.monotonic() + self.max_wait_ms / 1000.0
            while count < self.max_images:
                remaining = deadline - time.monotonic()
                try:
                    nxt = self._pending.get(timeout=remaining) if remaining > 0 else self._pending.get_nowait()
                except queue.Empty:
                    break
                if nxt is _STOP:
                    stopping = True
                    break
                if nxt.options != first.options or count + len(nxt.images) > self.max_images:
                    carried = nxt
                    break
                batch.append(nxt)
                count += len(nxt.images)
            self._run(batch)
        if carried is not None and carried is not _STOP:
            self._run([carried])
        self._drain()

    def _drain(self) -> None:
        """Requests queued after close (a race with :meth:`close`) still get an answer."""
        while True:
            try:
                request = self._pending.get_nowait()
            except queue.Empty:
                return
            if request is not _STOP:
                self._run([request])

    def _record(self, batch: Sequence[_Request], *, fell_back: bool) -> None:
        self.history.append(
            BatchRecord(studies=len(batch), images=sum(len(r.images) for r in batch), fell_back=fell_back)
        )
        del self.history[: -self._history_size]

    def _run(self, batch: Sequence[_Request]) -> None:
        options = batch[0].options.as_kwargs()
        try:
            results = self.analyzer.analyze_studies([r.images for r in batch], **options)
        except Exception as exc:  # noqa: BLE001 - handed to the caller(s); a batch is retried study by study
            if len(batch) == 1:
                self._record(batch, fell_back=False)
                batch[0].future.set_exception(exc)
                return
            logger.warning(
                "a batch of %d studies failed (%s: %s); analysing them one at a time",
                len(batch), type(exc).__name__, exc,
            )
            self._record(batch, fell_back=True)
            for request in batch:
                self._run_one(request)
            return
        self._record(batch, fell_back=False)
        for request, result in zip(batch, results, strict=True):
            request.future.set_result(result)

    def _run_one(self, request: _Request) -> None:
        try:
            result = self.analyzer.analyze_studies([request.images], **request.options.as_kwargs())[0]
        except Exception as exc:  # noqa: BLE001 - handed to this study's caller, who reports it
            request.future.set_exception(exc)
            return
        request.future.set_result(result)
