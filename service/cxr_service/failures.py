"""Why a job failed, sorted by what the worker does about it."""

from __future__ import annotations


class JobFailure(Exception):
    """A job could not complete; the message is the reason shown in the job and logs.

    Messages never contain patient identifiers: only UIDs, counts, hosts and HTTP statuses.
    """


class TransientFailure(JobFailure):
    """Worth retrying later: the PACS or the destination is down, a timeout, a 5xx."""


class PermanentFailure(JobFailure):
    """Retrying cannot help: the study does not exist, holds no CR/DX image, a 4xx answer."""
