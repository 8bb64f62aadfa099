"""Input normalisation and fp16 state-dict helpers shared by every network of the pipeline.

Every network sees the display array (float32 in [0, 1], white = dense) normalised as
``(x - 0.5) / 0.25``. Shipped weights are fp16 state dicts; inference converts them back to
float32 before loading.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger(__name__)

NORM_MEAN = 0.5
NORM_STD = 0.25


def normalise(x: torch.Tensor) -> torch.Tensor:
    """Map a display-range tensor ([0, 1], white = dense) to the network input range."""
    return (x - NORM_MEAN) / NORM_STD


def fp16_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict with floating tensors in fp16 (integer buffers kept), on the CPU."""
    return {
        k: (v.detach().to("cpu", torch.float16) if v.is_floating_point() else v.detach().to("cpu")).contiguous()
        for k, v in model.state_dict().items()
    }


def float32_state_dict(state: dict[str, Any]) -> dict[str, Any]:
    """Floating tensors of a (possibly fp16) state dict converted to float32."""
    return {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in state.items()}


def fp16_nbytes(model: torch.nn.Module) -> int:
    """Bytes of the model's floating state (parameters and buffers) stored as fp16."""
    return sum(2 * v.numel() for v in model.state_dict().values() if v.is_floating_point())


def load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """A model state dict from a trainer checkpoint (``{"model": ...}``) or a bare (fp16) state dict."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"weights file {path} does not exist")
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict):
        raise ValueError(f"weights file {path} holds a {type(state).__name__}, not a state dict")
    if isinstance(state.get("model"), dict):
        state = state["model"]
    return float32_state_dict(state)


def model_from_state_dict(
    build: Callable[[], torch.nn.Module], state: dict[str, Any], *, device: torch.device
) -> torch.nn.Module:
    """``build()`` loaded with ``state`` (fp16 tensors become float32), on ``device``, in eval mode.

    The model is channels-last, which makes convolutions markedly faster on the CPU.
    """
    model = build()
    model.load_state_dict(float32_state_dict(state))
    return model.to(device=device, memory_format=torch.channels_last).eval()
