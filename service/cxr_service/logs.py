"""Logging of the entry points, with patient data and secrets kept out of every log.

:func:`configure_logging` is called once by each entry point (``cxr serve``, ``cxr worker``,
``cxr scp``, ``cxr analyze``, through :func:`cxr_service.cli.main`); library modules only ever
call ``logging.getLogger(__name__)``.

What reaches a log passes :class:`RedactingFilter`, installed on the root handler:

* Python warnings (``logging.captureWarnings``): highdicom and pydicom quote DICOM values in
  them, e.g. ``The string "JOHNDOE" is unlikely to represent the intended person name``.
* Uncaught exceptions of the main thread and of other threads (``sys.excepthook``,
  ``threading.excepthook``), which would otherwise be printed to stderr unfiltered.
* uvicorn's access log: the query string is dropped (``?token=…`` or ``?access_token=…``
  would otherwise be written verbatim); only the path is kept.

Redacted in every message and in exception text (:func:`redact`):

* anything quoted (``'…'`` or ``"…"``): libraries quote dataset values when they complain
  about them. Quoted DICOM UIDs (digits and dots) are kept: Study, Series and SOP Instance
  UIDs are what an operator needs to find an instance, and cxr logs them on purpose;
* person names in DICOM form (any word with a ``^``);
* DICOM dates and date-times (``YYYYMMDD…``) that are not part of a UID;
* values after the keywords of patient-level attributes (``PatientName=…``, ``PatientID: …``);
* secrets: query parameters named like credentials, ``Bearer …`` values, passwords in URLs.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import traceback
from types import TracebackType

logger = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
REDACTED = "<redacted>"

# A quoted value: '…' or "…" on one line. The content is redacted unless it is a UID.
# An opening quote follows no letter or digit (so the apostrophe of "Patient's" opens nothing)
# and a closing one precedes none (so "O'Brien" stays inside its quotes).
_QUOTED = re.compile(r"""(?<!\w)(?P<q>['"])(?P<value>(?:(?!(?P=q))[^\n]){0,512})(?P=q)(?!\w)""")
# A JSON object key ("name": after "{" or ","), as in our own training and metrics logs, is a
# field name, not a value, and is kept.
_JSON_KEY = re.compile(r"""[A-Za-z_][A-Za-z0-9_]{0,63}""")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)+$")
# A DICOM person name: a run of non-separators holding at least one caret.
_PERSON_NAME = re.compile(r"""[^\s'"(){}\[\],;:=]*\^[^\s'"(){}\[\],;:=]*""")
# DA (YYYYMMDD) and DT (YYYYMMDDHHMMSS[.ffffff]) values, not inside a longer number or a UID.
_DICOM_DATE = re.compile(r"(?<![\w.])(?:19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])(?:\d{2,6}(?:\.\d{1,6})?)?(?![\w.])")
PATIENT_KEYWORDS: tuple[str, ...] = (
    "PatientName",
    "PatientID",
    "OtherPatientIDs",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientSex",
    "PatientAge",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientMotherBirthName",
    "IssuerOfPatientID",
    "AccessionNumber",
    "ReferringPhysicianName",
    "PerformingPhysicianName",
    "OperatorsName",
    "InstitutionName",
    "StudyID",
)
_KEYWORD_VALUE = re.compile(
    r"\b(?P<key>" + "|".join(PATIENT_KEYWORDS) + r")(?P<sep>\s*(?:[=:]|\bis\b)\s*)(?P<value>[^\s,;)\]}]+)"
)
_SECRET_PARAMETER = re.compile(
    r"(?P<key>[?&;](?:access_token|token|api_key|apikey|key|password|passwd|secret|auth|code|sig|signature)=)[^&;#\s'\"]*",
    re.IGNORECASE,
)
_BEARER = re.compile(r"(?P<key>\b(?:Bearer|Basic)\s+)[A-Za-z0-9._~+/=-]+", re.IGNORECASE)
_URL_PASSWORD = re.compile(r"(?P<key>://[^/\s:@]+:)[^/\s@]+@")
ACCESS_LOGGER = "uvicorn.access"


def redact(text: str) -> str:
    """``text`` with DICOM values, patient data and secrets replaced by ``<redacted>``."""
    text = _SECRET_PARAMETER.sub(lambda m: m["key"] + REDACTED, text)
    text = _BEARER.sub(lambda m: m["key"] + REDACTED, text)
    text = _URL_PASSWORD.sub(lambda m: m["key"] + REDACTED + "@", text)
    text = _QUOTED.sub(_redact_quoted, text)
    text = _KEYWORD_VALUE.sub(lambda m: m["key"] + m["sep"] + REDACTED, text)
    text = _PERSON_NAME.sub(REDACTED, text)
    return _DICOM_DATE.sub(REDACTED, text)


def _is_json_key(match: re.Match[str]) -> bool:
    text, start, end = match.string, match.start(), match.end()
    before = text[:start].rstrip(" ")
    return (
        match["q"] == '"' and before.endswith(("{", ",")) and text[end : end + 1] == ":"
        and _JSON_KEY.fullmatch(match["value"]) is not None
    )


def _redact_quoted(match: re.Match[str]) -> str:
    value = match["value"]
    if not value or value == REDACTED or _UID.match(value) or _is_json_key(match):
        return match[0]
    return f"{match['q']}{REDACTED}{match['q']}"


# Exceptions whose messages name code (attributes, names, modules), never data.
_CODE_EXCEPTIONS = re.compile(r"^(?:[\w.]+\.)?(?:AttributeError|NameError|UnboundLocalError|ImportError|ModuleNotFoundError): ")
_MARKERS = re.compile(r"^\s*[\^~]+\s*$")


def redact_traceback(text: str) -> str:
    """A formatted traceback with its messages redacted. What a developer needs and holds no
    patient data is kept as it is: frame lines (file, line, function), the source line under
    each, the ``^^^`` markers, and the messages of exceptions that name code
    (``AttributeError: 'list' object has no attribute 'get'``)."""
    lines = []
    in_frame = False
    for line in text.splitlines():
        stripped = line.lstrip()
        if stripped.startswith('File "'):
            lines.append(line)
            in_frame = True
            continue
        indented = line.startswith("    ")
        if (in_frame and indented) or _MARKERS.match(line) or _CODE_EXCEPTIONS.match(line):
            lines.append(line)
            continue
        in_frame = False
        keep = stripped in ("Traceback (most recent call last):", "")
        lines.append(line if keep else redact(line))
    return "\n".join(lines)


def strip_query(path: str) -> str:
    """A request target without its query string (``/v1/jobs/x?token=s`` → ``/v1/jobs/x``)."""
    return path.split("?", 1)[0]


class RedactingFilter(logging.Filter):
    """Rewrites each record so that no handler can write patient data or a secret.

    The message is formatted and redacted once (``record.args`` cleared); exception and stack
    text are formatted here and redacted, so formatters use the redacted ``exc_text``.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_cxr_redacted", False):
            return True
        if record.name == ACCESS_LOGGER:
            _strip_access_query(record)
        try:
            message = record.getMessage()
        except (TypeError, ValueError) as exc:
            message = f"{record.msg!s} (arguments could not be formatted: {type(exc).__name__})"
        if record.name == ACCESS_LOGGER:
            # The request line is quoted by uvicorn: only its query could hold a secret, and it is gone.
            redacted = _SECRET_PARAMETER.sub(lambda m: m["key"] + REDACTED, message)
            redacted = _PERSON_NAME.sub(REDACTED, redacted)
        else:
            redacted = redact(message)
        record.msg, record.args = redacted, None
        if record.exc_info and not record.exc_text:
            record.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        if record.exc_text:
            record.exc_text = redact_traceback(record.exc_text)
        if record.stack_info:
            record.stack_info = redact_traceback(record.stack_info)
        record._cxr_redacted = True
        return True


def _strip_access_query(record: logging.LogRecord) -> None:
    """uvicorn logs ``'%s - "%s %s HTTP/%s" %d'`` with the path and query as the third argument."""
    args = record.args
    if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
        record.args = (*args[:2], strip_query(args[2]), *args[3:])


class AccessLogQueryFilter(logging.Filter):
    """For the ``uvicorn.access`` logger itself: no query string in the request line (also
    where a handler other than the root's writes the access log)."""

    def filter(self, record: logging.LogRecord) -> bool:
        _strip_access_query(record)
        return True


def configure_logging(level: str | int | None = None, *, stream: object | None = None) -> logging.Handler:
    """Configure the root logger of an entry point: one stream handler (stderr) whose records
    are redacted, warnings and uncaught exceptions routed through it. Idempotent: a second
    call replaces the handler it installed. Returns the handler."""
    level = level if level is not None else os.environ.get("CXR_LOG_LEVEL", "INFO")
    if isinstance(level, str):
        level = level.upper()
    root = logging.getLogger()
    for handler in list(root.handlers):
        if getattr(handler, "_cxr_handler", False):
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)  # type: ignore[arg-type]
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    handler.addFilter(RedactingFilter())
    handler._cxr_handler = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level)
    # Handlers someone else installed on the root (none in our entry points) redact as well.
    for other in root.handlers:
        if not any(isinstance(f, RedactingFilter) for f in other.filters):
            other.addFilter(RedactingFilter())
    access = logging.getLogger(ACCESS_LOGGER)
    if not any(isinstance(f, AccessLogQueryFilter) for f in access.filters):
        access.addFilter(AccessLogQueryFilter())
    # highdicom logs every attribute module it copies at INFO.
    logging.getLogger("highdicom").setLevel(logging.WARNING)
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread
    return handler


def _log_uncaught(exc_type: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
    if issubclass(exc_type, KeyboardInterrupt):
        sys.__excepthook__(exc_type, exc, tb)
        return
    logger.critical("uncaught exception", exc_info=(exc_type, exc, tb))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread is not None else "unknown"
    logger.error("uncaught exception in thread %s", name, exc_info=(args.exc_type, args.exc_value, args.exc_traceback))
