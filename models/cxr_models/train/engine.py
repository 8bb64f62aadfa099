"""The epoch loop every trainer of this package shares.

A trainer describes its work as a :class:`Task` (batches, loss, validation) and calls
:func:`fit`, which owns the optimizer (AdamW), the one-cycle schedule, mixed precision on CUDA,
resumable checkpoints (``OUT/checkpoint.pt``), the best model (``OUT/model_best.pt`` and its fp16
state dict ``OUT/weights_fp16.pt``) and ``OUT/train_log.jsonl`` (one JSON line per epoch).

A task may also carry ``sample_weights`` (one per training item: weighted sampling with
replacement), ``auxiliary`` (a training-only module trained with the model, saved in the
checkpoint for resuming but never in the model weights) and ``components`` (the last step's loss
terms by name, averaged per epoch into the log); ``Defaults.grad_clip`` clips the gradient norm.

``--max-steps`` counts optimizer steps over the whole run, resumes included. When it stops a run
inside an epoch, that epoch is validated and checkpointed as finished, so ``--resume`` starts at
the next epoch. Each epoch's shuffling, augmentation and dropout draw from RNGs seeded by
``(seed, epoch)``, so a resumed run continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from cxr_models.devices import resolve_device
from cxr_models.nets.common import fp16_state_dict
from cxr_models.train.common import (
    BEST_NAME,
    CHECKPOINT_NAME,
    autocast,
    configure_threads,
    grad_scaler,
    load_checkpoint,
    load_init,
    progress,
    save_checkpoint,
    set_seed,
)

logger = logging.getLogger(__name__)

LOG_NAME = "train_log.jsonl"
WEIGHTS_NAME = "weights_fp16.pt"


@dataclass(frozen=True)
class Defaults:
    """A trainer's defaults for the common arguments left unset on the command line."""

    epochs: int
    batch_size: int
    lr: float
    weight_decay: float = 1e-4
    grad_clip: float | None = None


@dataclass(frozen=True)
class FitResult:
    epochs: int
    steps: int
    best_metric: float | None
    metric: str


class Task(Protocol):
    """What :func:`fit` needs from a trainer."""

    metric: str  # key of the validation dict that selects the best model
    higher_is_better: bool

    @property
    def train_size(self) -> int: ...

    def loss(
        self, model: torch.nn.Module, indices: np.ndarray, *, generator: torch.Generator, device: torch.device
    ) -> torch.Tensor: ...

    def validate(self, model: torch.nn.Module, *, device: torch.device) -> dict[str, float]: ...


def task_weights(task: Task) -> np.ndarray | None:
    """The task's per-item sampling weights (attribute ``sample_weights``), None for plain shuffling."""
    return getattr(task, "sample_weights", None)


def task_auxiliary(task: Task) -> torch.nn.Module | None:
    """The task's training-only module (attribute ``auxiliary``), if any."""
    return getattr(task, "auxiliary", None)


def resolve_hyperparameters(args: argparse.Namespace, defaults: Defaults) -> tuple[int, int, float]:
    """(epochs, batch_size, lr) from the arguments, falling back to the trainer defaults."""
    epochs = args.epochs if args.epochs is not None else defaults.epochs
    batch_size = args.batch_size if args.batch_size is not None else defaults.batch_size
    lr = args.lr if args.lr is not None else defaults.lr
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    return epochs, batch_size, lr


def epoch_batches(
    n: int, *, batch_size: int, generator: torch.Generator, weights: np.ndarray | None = None
) -> list[np.ndarray]:
    """A shuffled partition of ``range(n)`` into batches; a trailing batch of one joins the previous.

    With ``weights`` (one per index) an epoch is ``n`` draws with replacement in proportion to
    them, so a source of weight 2 is seen twice as often as one of weight 1.
    """
    if weights is None:
        order = torch.randperm(n, generator=generator).numpy()
    else:
        if len(weights) != n:
            raise ValueError(f"weights has {len(weights)} entries for {n} training items")
        probabilities = torch.as_tensor(np.asarray(weights, dtype=np.float64))
        order = torch.multinomial(probabilities, n, replacement=True, generator=generator).numpy()
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    if len(batches) > 1 and len(batches[-1]) < 2:
        last = batches.pop()
        batches[-1] = np.concatenate([batches[-1], last])
    return batches


def _score(value: float | None, *, higher_is_better: bool) -> float:
    """``value`` oriented so that larger is better; -inf when undefined."""
    if value is None or not math.isfinite(value):
        return -math.inf
    return value if higher_is_better else -value


def fit(
    args: argparse.Namespace,
    *,
    task: Task,
    model: torch.nn.Module,
    defaults: Defaults,
    device: torch.device,
    extra: dict[str, Any] | None = None,
) -> FitResult:
    """Train ``model`` on ``task`` into ``args.out``; see the module docstring."""
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    epochs, batch_size, lr = resolve_hyperparameters(args, defaults)
    if task.train_size < 1:
        raise ValueError("the training split is empty; check --data, --limit and --val-fraction")
    steps_per_epoch = len(epoch_batches(task.train_size, batch_size=batch_size, generator=torch.Generator()))
    total_steps = epochs * steps_per_epoch

    if args.init is not None and args.resume is None:
        load_init(model, args.init)
    # channels-last convolutions are about a third faster on the CPU (oneDNN) and fine on CUDA.
    model.to(device=device, memory_format=torch.channels_last)
    auxiliary = task_auxiliary(task)
    parameters = [p for p in model.parameters() if p.requires_grad]
    if auxiliary is not None:
        auxiliary.to(device)
        parameters += [p for p in auxiliary.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=lr, weight_decay=defaults.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=total_steps, pct_start=0.15, div_factor=20.0, final_div_factor=200.0
    )
    scaler = grad_scaler(device)
    start_epoch, step = 0, 0
    best: float | None = None
    if args.resume is not None:
        state = load_checkpoint(args.resume, model=model, optimizer=optimizer, scheduler=scheduler, map_location=device)
        start_epoch, step = int(state["epoch"]), int(state["step"])
        best = state.get("extra", {}).get("best_metric")
        if auxiliary is not None and "auxiliary" in state.get("extra", {}):
            auxiliary.load_state_dict(state["extra"]["auxiliary"])

    log_path = out / LOG_NAME
    completed = start_epoch
    for epoch in range(start_epoch, epochs):
        if args.max_steps is not None and step >= args.max_steps:
            break
        started = time.monotonic()
        generator = torch.Generator().manual_seed(args.seed * 1_000_003 + epoch)
        torch.manual_seed(args.seed * 1_000_033 + epoch)
        model.train()
        if auxiliary is not None:
            auxiliary.train()
        losses: list[float] = []
        components: dict[str, list[float]] = {}
        batches = epoch_batches(task.train_size, batch_size=batch_size, generator=generator, weights=task_weights(task))
        for indices in progress(batches, desc=f"epoch {epoch + 1}/{epochs}", disable=args.no_progress):
            optimizer.zero_grad(set_to_none=True)
            with autocast(device):
                loss = task.loss(model, indices, generator=generator, device=device)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss {loss.item()} at step {step}")
            scaler.scale(loss).backward()
            if defaults.grad_clip is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(parameters, defaults.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            if scheduler.last_epoch < scheduler.total_steps:
                scheduler.step()
            losses.append(float(loss.detach()))
            for name, value in (getattr(task, "components", None) or {}).items():
                components.setdefault(name, []).append(float(value))
            step += 1
            if args.max_steps is not None and step >= args.max_steps:
                break
        model.eval()
        if auxiliary is not None:
            auxiliary.eval()
        metrics = task.validate(model, device=device)
        value = metrics.get(task.metric)
        oriented = _score(value, higher_is_better=task.higher_is_better)
        improved = oriented > _score(best, higher_is_better=task.higher_is_better) or not (out / BEST_NAME).exists()
        if improved and math.isfinite(oriented):
            best = value
        record = {
            "epoch": epoch + 1,
            "step": step,
            "train_loss": float(np.mean(losses)) if losses else None,
            **{f"train_{k}": float(np.mean(v)) for k, v in components.items()},
            "lr": optimizer.param_groups[0]["lr"],
            "seconds": round(time.monotonic() - started, 2),
            **{f"val_{k}": v for k, v in metrics.items()},
        }
        logger.info("epoch %d/%d: %s", epoch + 1, epochs, json.dumps(record))
        with log_path.open("a") as fh:
            fh.write(json.dumps(record) + "\n")
        checkpoint_extra = {**(extra or {}), "best_metric": best, "metric": task.metric}
        save_checkpoint(
            out / CHECKPOINT_NAME, model=model, optimizer=optimizer, scheduler=scheduler, args=args,
            epoch=epoch + 1, step=step, metrics=metrics,
            extra=checkpoint_extra if auxiliary is None else {**checkpoint_extra, "auxiliary": auxiliary.state_dict()},
        )
        if improved:
            save_checkpoint(
                out / BEST_NAME, model=model, optimizer=None, scheduler=None, args=args,
                epoch=epoch + 1, step=step, metrics=metrics, extra=checkpoint_extra,
            )
            torch.save(fp16_state_dict(model), out / WEIGHTS_NAME)
        completed = epoch + 1
    return FitResult(epochs=completed, steps=step, best_metric=best, metric=task.metric)


def configure_logging() -> None:
    """Logging for trainer entry points (library modules never configure logging)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def setup_run(args: argparse.Namespace) -> torch.device:
    """Threads, seeds and device of a training run."""
    configure_threads(args.threads)
    set_seed(args.seed)
    device = resolve_device(args.device)
    logger.info("training on %s with %d CPU threads", device, torch.get_num_threads())
    return device
