"""``cxr``: the one command-line entry point of the project.

Model commands (``phantom``, ``train``, ``evaluate``) come from :mod:`cxr_models.cli`; the
service's own commands are added here as the service grows.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from cxr_models.cli import COMMANDS as MODEL_COMMANDS
from cxr_models.cli import Command, dispatch
from cxr_service.logs import configure_logging
from cxr_service.settings import SettingsError

logger = logging.getLogger(__name__)

SERVICE_COMMANDS: dict[str, dict[str, Command] | Command] = {
    "analyze": Command("cxr_service.analyze_cli", "analyse DICOM files/folders: SR, GSPS, SEG, SC and result.json"),
    "serve": Command("cxr_service.serve_cli", "run the API (with an embedded worker by default)"),
    "worker": Command("cxr_service.worker", "run a standalone worker on the configured queue"),
    "scp": Command("cxr_service.scp_cli", "run the DICOM Storage SCP that analyses received studies"),
}


def _usage(message: str | None = None) -> None:
    lines = ["usage: cxr COMMAND [ARGS...]", "", "commands:"]
    for name, entry in {**MODEL_COMMANDS, **SERVICE_COMMANDS}.items():
        if isinstance(entry, Command):
            lines.append(f"  {name:<22} {entry.help}")
        else:
            for sub, cmd in entry.items():
                lines.append(f"  {name + ' ' + sub:<22} {cmd.help}")
    if message:
        lines.insert(0, message)
    sys.stderr.write("\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Every command logs through the redacting handler: no patient data or secret in any log.
    configure_logging(os.environ.get("CXR_LOG_LEVEL", "INFO"))
    if not argv or argv[0] in ("-h", "--help", "help"):
        _usage()
        raise SystemExit(0 if argv else 2)
    try:
        for table in (MODEL_COMMANDS, SERVICE_COMMANDS):
            if dispatch(table, argv, prog="cxr", usage=lambda m: (_usage(m), sys.exit(2))):
                return
    except SettingsError as exc:
        sys.stderr.write(f"cxr {argv[0]}: {exc}\n")
        raise SystemExit(2) from None
    _usage(f"cxr: unknown command {argv[0]!r}")
    raise SystemExit(2)


if __name__ == "__main__":
    main()
