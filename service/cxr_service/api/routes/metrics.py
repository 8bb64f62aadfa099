"""``GET /metrics`` in the Prometheus text format: jobs by state, queue depth, per-stage
latency histograms, analyses by triage priority and webhook notices by state. Read from the
shared job store, so the figures cover every worker."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from fastapi import APIRouter, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from cxr_service.api.deps import Authorized, QueueDep, TriageDep
from cxr_service.jobqueue import JobQueue
from cxr_service.worklist import TriageStore

logger = logging.getLogger(__name__)
router = APIRouter(tags=["metrics"], dependencies=[Authorized])


class QueueCollector:
    """A Prometheus collector over the job store, the triage store and the queue engine."""

    def __init__(self, queue: JobQueue, triage: TriageStore) -> None:
        self.queue = queue
        self.triage = triage

    def collect(self) -> Iterator[Metric]:
        jobs = GaugeMetricFamily("cxr_jobs", "Jobs by state", labels=["state"])
        for state, count in sorted(self.queue.store.counts_by_state().items()):
            jobs.add_metric([state], count)
        yield jobs
        depth = GaugeMetricFamily("cxr_queue_depth", "Messages waiting in the queue engine", labels=["kind"])
        for kind, count in self.queue.depth().items():
            depth.add_metric([kind], count)
        yield depth
        latency = HistogramMetricFamily(
            "cxr_stage_latency_seconds", "Latency of each pipeline stage per finished job", labels=["stage"]
        )
        for stage, hist in self.queue.store.histograms().items():
            buckets = [(repr(bound / 1000.0), count) for bound, count in sorted(hist.buckets.items())]
            buckets.append(("+Inf", hist.count))
            latency.add_metric([stage], buckets, sum_value=hist.sum_ms / 1000.0)
        yield latency
        triaged = CounterMetricFamily("cxr_triage", "Studies analysed by jobs, by triage priority", labels=["priority"])
        for priority, count in sorted(self.triage.counts().items()):
            triaged.add_metric([priority], count)
        yield triaged
        notices = GaugeMetricFamily("cxr_triage_webhook_notices", "Triage webhook notices by state", labels=["state"])
        for state, count in sorted(self.triage.notice_counts().items()):
            notices.add_metric([state], count)
        yield notices


@router.get("/metrics", summary="Prometheus metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
def metrics(queue: QueueDep, triage: TriageDep) -> Response:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(QueueCollector(queue, triage))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
