"""Why a job failed, sorted by what the worker does about it."""

from __future__ import annotations

_MAX_REASON = 300

# Errors that say the job's own data or our code cannot work: the same input fails the same way
# on every attempt, so retrying only delays the answer (and a study's good images with it).
DETERMINISTIC_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    AssertionError,
    NotImplementedError,
    ArithmeticError,
    RecursionError,
)


class JobFailure(Exception):
    """A job could not complete; the message is the reason shown in the job and logs.

    Messages never contain patient identifiers: only UIDs, counts, hosts and HTTP statuses.
    """


class TransientFailure(JobFailure):
    """Worth retrying later: the PACS or the destination is down, a timeout, a 5xx."""


class PermanentFailure(JobFailure):
    """Retrying cannot help: the study does not exist, holds no CR/DX image, a 4xx answer."""


def as_job_failure(exc: BaseException) -> JobFailure:
    """``exc`` as the failure a job reports: a :class:`JobFailure` unchanged, a deterministic
    error (:data:`DETERMINISTIC_ERRORS`) permanent, anything else (an OS or store error, a lost
    connection) transient. The message names the error type, never its arguments, which may
    quote header values."""
    if isinstance(exc, JobFailure):
        return exc
    if isinstance(exc, DETERMINISTIC_ERRORS):
        return PermanentFailure(f"internal error ({type(exc).__name__}); not retried, the same input fails the same way")
    detail = f": {exc.strerror}" if isinstance(exc, OSError) and exc.strerror else ""
    return TransientFailure(f"internal error ({type(exc).__name__}{detail})"[:_MAX_REASON])
