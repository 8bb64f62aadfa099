"""Shared trainer plumbing: arguments, seeds, device, mixed precision, resumable checkpoints.

Every trainer module is ``python -m cxr_models.train.<name>`` runnable with ``get_args_parser()``
and ``main(args)``, in the style of the torchvision detection references. A checkpoint holds the
model, optimizer, scheduler, args and epoch, so ``--resume`` continues where a run stopped.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import random
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from tqdm import tqdm

logger = logging.getLogger(__name__)
T = TypeVar("T")

CHECKPOINT_NAME = "checkpoint.pt"
BEST_NAME = "model_best.pt"


def add_common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Arguments every trainer takes."""
    parser.add_argument(
        "--data", action="append", required=True, metavar="PATH[,format=F][,weight=W]",
        help="a dataset root (PhantomCXR or a supported layout); repeat to mix sources, each with its sampling weight",
    )
    parser.add_argument("--out", type=Path, required=True, help="output folder for checkpoints and logs")
    parser.add_argument("--format", default="auto", help="dataset layout: auto, siim, rsna, lungmasks, padchest")
    parser.add_argument("--epochs", type=int, default=None, help="number of epochs (trainer default when unset)")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size (trainer default when unset)")
    parser.add_argument("--lr", type=float, default=None, help="peak learning rate (trainer default when unset)")
    parser.add_argument("--max-steps", type=int, default=None, help="stop after this many optimizer steps in total")
    parser.add_argument("--limit", type=int, default=None, help="use at most this many training images")
    parser.add_argument(
        "--val-fraction", type=float, default=0.2,
        help="fraction of patients held out for validation (a stable hash per patient, see cxr_models.train.data)",
    )
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the patient hash that makes the split")
    parser.add_argument(
        "--init", type=Path, default=None,
        help="start from these weights (a checkpoint or state dict of the same model), e.g. the PhantomCXR-trained ones",
    )
    parser.add_argument("--workers", type=int, default=0, help="data loader worker processes")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: all cores)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--resume", type=Path, default=None, help="checkpoint to resume from")
    parser.add_argument(
        "--acquisition-jitter", action="store_true",
        help="also simulate real acquisitions in training (CR processing, CLAHE, 8-bit, JPEG, burned-in text; train/acquisition.py)",
    )
    parser.add_argument("--no-progress", action="store_true", help="disable progress bars")
    return parser


def set_seed(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    torch.cuda.manual_seed_all(seed)


def configure_threads(threads: int | None) -> None:
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)


def autocast(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """Mixed precision on CUDA; a no-op context on the CPU."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def grad_scaler(device: torch.device) -> torch.amp.GradScaler:
    return torch.amp.GradScaler("cuda", enabled=device.type == "cuda")


def progress(iterable: Iterable[T], *, desc: str, total: int | None = None, disable: bool = False) -> Iterator[T]:
    """A tqdm progress bar (to stderr), disabled on request or when not a terminal under CI."""
    return iter(tqdm(iterable, desc=desc, total=total, disable=disable, dynamic_ncols=True, leave=False))


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "spec"):
        return value.spec()
    return value


def args_to_dict(args: argparse.Namespace) -> dict[str, Any]:
    return {k: _plain(v) for k, v in vars(args).items()}


def load_init(model: torch.nn.Module, path: Path) -> None:
    """Initialise ``model`` from a checkpoint of a trainer or a bare (fp16 or fp32) state dict."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    reference = model.state_dict()
    converted = {k: (v.to(reference[k].dtype) if k in reference else v) for k, v in state.items()}
    model.load_state_dict(converted)
    logger.info("initialised from %s", path)


def save_checkpoint(
    path: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    scheduler: Any | None,
    args: argparse.Namespace,
    epoch: int,
    step: int,
    metrics: dict[str, float] | None = None,
    extra: dict[str, Any] | None = None,
) -> None:
    """Write a resumable checkpoint atomically (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "args": args_to_dict(args),
        "epoch": epoch,
        "step": step,
        "metrics": metrics or {},
        "extra": extra or {},
    }
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(
    path: Path,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any | None = None,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Restore model (and optimizer/scheduler when given); returns the whole checkpoint dict."""
    state = torch.load(path, map_location=map_location, weights_only=False)
    model.load_state_dict(state["model"])
    if optimizer is not None and state.get("optimizer") is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    logger.info("resumed from %s at epoch %s step %s", path, state.get("epoch"), state.get("step"))
    return state


def split_by_study(study_ids: list[str], *, val_fraction: float, seed: int) -> tuple[set[str], set[str]]:
    """Deterministic train/validation split of study ids (no study is on both sides)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    unique = sorted(set(study_ids))
    rng = random.Random(seed)
    rng.shuffle(unique)
    n_val = int(round(len(unique) * val_fraction))
    if val_fraction > 0 and n_val == 0 and len(unique) > 1:
        n_val = 1
    return set(unique[n_val:]), set(unique[:n_val])
