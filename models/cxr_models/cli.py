"""The model-side subcommands of the ``cxr`` CLI: ``phantom``, ``train``, ``evaluate``.

Each subcommand hands its remaining arguments to the ``get_args_parser()``/``main(args)`` of its
module, so ``cxr train view ...`` and ``python -m cxr_models.train.view ...`` are the same thing.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Command:
    module: str
    help: str
    fixed_args: tuple[str, ...] = ()


TRAINERS: dict[str, Command] = {
    "view": Command("cxr_models.train.view", "frontal / lateral / other view classifier"),
    "lungs": Command("cxr_models.train.lungs", "lung U-Net"),
    "detector-a": Command("cxr_models.train.detector", "two-stage Faster R-CNN opacity detector", ("--arch", "a")),
    "detector-b": Command("cxr_models.train.detector", "one-stage opacity detector", ("--arch", "b")),
    "opacity": Command("cxr_models.train.opacity", "opacity U-Net (ResNet18-like encoder)"),
    "study": Command("cxr_models.train.study", "4-class study classifier"),
}

COMMANDS: dict[str, dict[str, Command] | Command] = {
    "phantom": {"generate": Command("cxr_models.phantom.generate", "generate a PhantomCXR dataset")},
    "train": TRAINERS,
    "evaluate": Command("cxr_models.evaluation.evaluate", "evaluate the models, write metrics.json and report.md"),
}


def run_module(command: Command, argv: Sequence[str], *, prog: str) -> None:
    """Parse ``argv`` with the module's parser and run its ``main``.

    An error in what the user gave (a dataset or weights folder that is missing or incomplete, a
    malformed ``--data`` spec: ``ValueError``, ``OSError`` or ``WeightsError``) ends the command
    with one line naming it and exit status 2, as argparse does for bad options; the traceback is
    logged at DEBUG (``CXR_LOG_LEVEL=DEBUG``).
    """
    from cxr_models.weights import WeightsError

    module = importlib.import_module(command.module)
    parser = module.get_args_parser()
    parser.prog = prog
    args = parser.parse_args([*command.fixed_args, *argv])
    try:
        module.main(args)
    except (ValueError, OSError, WeightsError) as exc:
        logger.debug("%s failed", prog, exc_info=True)
        parser.exit(2, f"{prog}: error: {exc}\n")


def dispatch(
    table: dict[str, dict[str, Command] | Command],
    argv: Sequence[str],
    *,
    prog: str,
    usage: Callable[[str], None],
) -> bool:
    """Run the command ``argv`` names from ``table``; False when ``argv[0]`` is not in it."""
    if not argv or argv[0] not in table:
        return False
    entry = table[argv[0]]
    if isinstance(entry, Command):
        run_module(entry, argv[1:], prog=f"{prog} {argv[0]}")
        return True
    if len(argv) < 2 or argv[1] not in entry:
        usage(f"{prog} {argv[0]} {{{','.join(entry)}}} ...: " + "; ".join(f"{k}: {c.help}" for k, c in entry.items()))
        return True
    run_module(entry[argv[1]], argv[2:], prog=f"{prog} {argv[0]} {argv[1]}")
    return True
