"""Delivery of the triage webhook notices (``CXR_TRIAGE_WEBHOOK_URL``).

The worker only queues a notice in the triage store (:func:`cxr_service.worklist.record_job_triage`);
a :class:`WebhookNotifier` thread in every worker process POSTs the due ones. A notice the
receiver does not take (no connection, a timeout, any answer but 2xx) is tried again after
``CXR_TRIAGE_WEBHOOK_RETRY_S``, doubled at each failure up to 5 minutes, until
``CXR_TRIAGE_WEBHOOK_MAX_AGE_S`` after the analysis; then it is given up and logged. The
notices live in the job store's database, so they survive restarts of the worker too; a
notifier that dies while sending leaves its notice to another one after a lease.

The body holds no patient data: the Study Instance UID, the priority, the job id and times::

    {"study_instance_uid": "1.2...", "priority": "urgent", "job_id": "9f...",
     "arrived_at": "2026-12-02T00:41:07.120Z", "analysed_at": "...", "sent_at": "..."}

With ``CXR_TRIAGE_WEBHOOK_SECRET`` the request carries it in the ``CXR_TRIAGE_WEBHOOK_HEADER``
header. A receiver may get a notice twice (a notifier that died after sending): ``job_id``
identifies it.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx

import cxr_service
from cxr_service.settings import Settings
from cxr_service.worklist import Notice, NoticeState, TriageStore

logger = logging.getLogger(__name__)

MAX_RETRY_DELAY_S = 300.0
_BATCH = 20


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, tz=datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def notice_body(notice: Notice, *, sent_at: float) -> dict[str, Any]:
    """What the receiver gets: no patient data beyond the Study Instance UID."""
    return {
        "study_instance_uid": notice.study_instance_uid,
        "priority": str(notice.priority),
        "job_id": notice.job_id,
        "arrived_at": _iso(notice.arrived_at),
        "analysed_at": _iso(notice.analysed_at),
        "sent_at": _iso(sent_at),
    }


class WebhookNotifier:
    """Sends the due notices every ``poll_s``; see the module docstring."""

    def __init__(
        self,
        store: TriageStore,
        *,
        url: str,
        secret: str | None = None,
        header: str = "X-CXR-Webhook-Secret",
        retry_s: float = 5.0,
        max_age_s: float = 86400.0,
        timeout_s: float = 10.0,
        poll_s: float = 1.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.url = url
        self.headers = {"User-Agent": f"cxr/{getattr(cxr_service, '__version__', '0')}"}
        if secret:
            self.headers[header] = secret
        self.retry_s = retry_s
        self.max_age_s = max_age_s
        self.timeout_s = timeout_s
        self.poll_s = poll_s
        # A claimed notice is hidden from other notifiers this long: longer than one request.
        self.lease_s = 3 * timeout_s + 5.0
        self._clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="cxr-webhook", daemon=True)
        self._client = httpx.Client(timeout=timeout_s, follow_redirects=False)

    @classmethod
    def from_settings(cls, settings: Settings, store: TriageStore) -> WebhookNotifier | None:
        """None when no webhook is configured."""
        if settings.triage_webhook_url is None:
            return None
        secret = settings.triage_webhook_secret
        return cls(
            store,
            url=settings.triage_webhook_url,
            secret=secret.get_secret_value() if secret is not None else None,
            header=settings.triage_webhook_header,
            retry_s=settings.triage_webhook_retry_s,
            max_age_s=settings.triage_webhook_max_age_s,
            timeout_s=settings.triage_webhook_timeout_s,
        )

    def retry_delay(self, attempts: int) -> float:
        """Delay after the ``attempts``-th failed try (1, 2, ...)."""
        return min(MAX_RETRY_DELAY_S, self.retry_s * 2 ** max(0, attempts - 1))

    def deliver_due(self) -> int:
        """Try every due notice once; returns how many were delivered."""
        delivered = 0
        for notice in self.store.claim_notices(now=self._clock(), lease_s=self.lease_s, limit=_BATCH):
            if self._stop.is_set():
                break
            if self._send(notice):
                delivered += 1
        return delivered

    def _send(self, notice: Notice) -> bool:
        now = self._clock()
        attempts = notice.attempts + 1
        try:
            response = self._client.post(self.url, json=notice_body(notice, sent_at=now), headers=self.headers)
            error = None if 200 <= response.status_code < 300 else f"HTTP {response.status_code}"
        except httpx.HTTPError as exc:
            error = type(exc).__name__
        if error is None:
            self.store.settle_notice(
                notice.replace(state=NoticeState.DELIVERED, attempts=attempts, delivered_at=now, last_error=None)
            )
            logger.info("triage webhook: %s study %s (job %s) delivered at attempt %d", notice.priority, notice.study_instance_uid, notice.job_id, attempts)
            return True
        if now - notice.created_at >= self.max_age_s:
            self.store.settle_notice(notice.replace(state=NoticeState.FAILED, attempts=attempts, last_error=error))
            logger.error(
                "triage webhook: gave up the notice of study %s (job %s) after %d attempts over %.0f s: %s",
                notice.study_instance_uid, notice.job_id, attempts, now - notice.created_at, error,
            )  # fmt: skip
            return False
        delay = self.retry_delay(attempts)
        self.store.settle_notice(notice.replace(attempts=attempts, last_error=error, next_at=now + delay))
        logger.warning("triage webhook: study %s (job %s): %s; retry %d in %.1f s", notice.study_instance_uid, notice.job_id, error, attempts, delay)
        return False

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.deliver_due()
            except Exception:
                logger.exception("triage webhook: could not read or update the notices")
            self._stop.wait(self.poll_s)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.timeout_s + 5)
        self._client.close()
