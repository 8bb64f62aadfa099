"""Logs hold no patient data and no secret: the redaction rules, and configure_logging as an
entry point sets it up (warnings, uvicorn's access log, uncaught exceptions in threads)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import pytest

from cxr_service.logs import REDACTED, RedactingFilter, redact, redact_traceback, strip_query
from tests.service.procs import REPO


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ('The string "JOHNDOE" is unlikely to represent the intended person name', "JOHNDOE"),
        ("(0010,0010) Patient's Name  PN: 'JOHNDOE'", "JOHNDOE"),
        ("name Kowalczyk^Agnieszka in the header", "Kowalczyk"),
        ("name Müller^Zoë", "Zoë"),
        ("'O'Brien^Pat' rejected", "Brien"),
        ("Invalid value for VR DA: '19840312'", "19840312"),
        ("born 19840312, scanned 20240101093000.123", "19840312"),
        ("PatientID=PID-84921-X could not be parsed", "PID-84921-X"),
        ("AccessionNumber: ACC991 is too long", "ACC991"),
        ("GET /v1/jobs/x?token=s3cr3t-token-value&a=1", "s3cr3t-token-value"),
        ("fetch http://host/wado?access_token=abc.def.ghi failed", "abc.def.ghi"),
        ("Authorization: Bearer abcdef0123456789", "abcdef0123456789"),
        ("GET http://cxr:hunter2hunter2@pacs/dicom-web/studies", "hunter2hunter2"),
    ],
)
def test_redact_removes_patient_data_and_secrets(text: str, secret: str) -> None:
    redacted = redact(text)
    assert secret not in redacted, redacted
    assert REDACTED in redacted


@pytest.mark.parametrize(
    "text",
    [
        "rejected SOPInstanceUID 1.2.840.113619.2.55.19840312.7: no pixel data",
        "StudyInstanceUID '1.2.826.0.1.3680043.8.498.1' queued",
        "job 5e20200101ab0123 done in 812 ms",
        "it's the patient's study",
    ],
)
def test_redact_keeps_uids_ids_and_prose(text: str) -> None:
    assert redact(text) == text


def test_traceback_keeps_frames_and_redacts_messages() -> None:
    name = "JOHN" + "DOE"  # a value read from a dataset; source lines are shown as they are
    try:
        raise ValueError(f"bad PN value {name!r}")
    except ValueError:
        import traceback

        text = traceback.format_exc()
    redacted = redact_traceback(text)
    assert "JOHNDOE" not in redacted
    assert 'File "' in redacted and "test_logs.py" in redacted
    assert "ValueError: bad PN value '<redacted>'" in redacted
    assert 'raise ValueError(f"bad PN value {name!r}")' in redacted


def test_traceback_keeps_source_lines_markers_and_code_errors() -> None:
    text = (
        "Traceback (most recent call last):\n"
        '  File "/srv/cxr/outputs.py", line 72, in result_document\n'
        "    items = datasets.get(kind, [])\n"
        "            ^^^^^^^^^^^^\n"
        "AttributeError: 'list' object has no attribute 'get'\n"
    )
    assert redact_traceback(text) == text.rstrip("\n")


def test_filter_formats_args_and_exception_once() -> None:
    record = logging.LogRecord("highdicom.sr", logging.WARNING, __file__, 1, "name %s, uid %s", ("DOE^JOHN", "1.2.3"), None)
    value = "JOHN" + "DOE"
    try:
        raise RuntimeError(f"value {value!r}")
    except RuntimeError:
        record.exc_info = sys.exc_info()
    assert RedactingFilter().filter(record)
    assert record.getMessage() == f"name {REDACTED}, uid 1.2.3"
    assert "JOHNDOE" not in record.exc_text and "RuntimeError" in record.exc_text
    formatted = logging.Formatter("%(message)s").format(record)
    assert "JOHNDOE" not in formatted and "DOE^JOHN" not in formatted


def test_access_log_loses_its_query_string() -> None:
    record = logging.LogRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "GET", "/v1/jobs/ab?token=s3cr3t&x=1", "1.1", 401), None,
    )  # fmt: skip
    assert RedactingFilter().filter(record)
    assert record.getMessage() == '127.0.0.1:5000 - "GET /v1/jobs/ab HTTP/1.1" 401'
    assert strip_query("/healthz?access_token=x") == "/healthz"


ENTRY_POINT = textwrap.dedent(
    """
    import logging, sys, threading, warnings
    from cxr_service import cli
    try:
        cli.main(["--help"])  # configures logging as for every command, then prints the usage
    except SystemExit:
        pass
    from highdicom.valuerep import check_person_name
    check_person_name("JOHNDOE")                      # highdicom's UserWarning quotes the name
    logging.getLogger("uvicorn.access").info(
        '%s - "%s %s HTTP/%s" %d', "127.0.0.1:1", "GET", "/healthz?token=QUERYSECRET0123456789", "1.1", 200)
    def boom():
        raise ValueError("cannot parse PatientName 'ROEJANE'")
    t = threading.Thread(target=boom, name="t1"); t.start(); t.join()
    logging.getLogger("cxr_service.test").info("kept: study 1.2.3.4")
    """
)


def test_the_entry_point_redacts_warnings_access_log_and_thread_errors() -> None:
    """What `cxr serve`, `cxr worker`, `cxr scp` and `cxr analyze` get from cli.main."""
    env = {**os.environ, "CXR_LOG_LEVEL": "INFO"}
    run = subprocess.run([sys.executable, "-c", ENTRY_POINT], capture_output=True, text=True, timeout=120, cwd=REPO, env=env)
    assert run.returncode == 0, run.stderr
    log = run.stdout + run.stderr
    for secret in ("JOHNDOE", "QUERYSECRET0123456789", "ROEJANE"):
        assert secret not in log, f"{secret} leaked:\n{log}"
    # Each path was exercised: the warning, the access line, the thread's traceback.
    assert "py.warnings" in log and "single component" in log
    assert '"GET /healthz HTTP/1.1" 200' in log
    assert "uncaught exception in thread t1" in log and "ValueError: cannot parse PatientName" in log
    assert "kept: study 1.2.3.4" in log


def test_json_keys_of_our_own_records_stay_readable_while_their_string_values_are_redacted() -> None:
    from cxr_service.logs import redact

    assert redact('epoch 1/6: {"epoch": 1, "val_dice": 0.91}') == 'epoch 1/6: {"epoch": 1, "val_dice": 0.91}'
    assert redact('{"PatientName": "DOE", "metric": "dice"}') == '{"PatientName": "<redacted>", "metric": "<redacted>"}'
    # a quoted value followed by a colon in prose is still a value
    assert "JOHNDOE" not in redact("UserWarning: value 'JOHNDOE': not a valid PN")
