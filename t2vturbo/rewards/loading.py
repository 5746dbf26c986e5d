"""Shared weight-loading steps for the reward models: unwrap the official file layout, build the module
without allocating random weights, and load strictly with errors a user can act on."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError


def unwrap_state_dict(obj: Any, key: str | None, path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Return ``obj[key]`` (the official nesting, e.g. {"state_dict": ...} or {"model": ...}) as a flat dict.

    A file that is already flat is accepted too, and a DistributedDataParallel ``module.`` prefix is dropped.
    """
    if key is not None and isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
        obj = obj[key]
    if not isinstance(obj, Mapping) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        expected = f'{{"{key}": {{name: tensor}}}}' if key else "{name: tensor}"
        raise CheckpointError(f"{path} does not hold a state dict in the expected layout {expected}")
    state = dict(obj)
    if all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def build_and_load(
    build: Callable[[], nn.Module],
    state_dict: Mapping[str, torch.Tensor],
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    rebuild_buffers: Callable[[nn.Module], None] | None = None,
) -> nn.Module:
    """Build a module on the meta device (no random init, no memory), allocate it, and load ``state_dict`` strictly.

    Args:
        build: makes the module (called under ``torch.device("meta")``).
        state_dict: official key names; must match the module exactly (names and shapes).
        path: the file the weights came from (named in errors).
        rebuild_buffers: recomputes non-persistent buffers (e.g. causal masks) after allocation.

    Raises:
        CheckpointError: missing/unexpected keys or shape mismatches (first few named).
    """
    with torch.device("meta"):
        model = build()
    check_state_dict(model, state_dict, path)
    model = model.to_empty(device=device).to(dtype=dtype)
    model.load_state_dict(state_dict, strict=True)
    if rebuild_buffers is not None:
        rebuild_buffers(model)
    for name, buf in model.named_buffers():
        if buf.is_meta:  # pragma: no cover - a new non-persistent buffer we do not know how to rebuild
            raise RuntimeError(f"buffer {name} was not rebuilt after loading")
    return model


def check_state_dict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Raise a one-line CheckpointError unless ``state_dict`` has exactly the model's keys and shapes."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    wrong = [
        f"{k} {tuple(state_dict[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {_few(missing)})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {_few(unexpected)})")
        if wrong:
            parts.append(f"{len(wrong)} shape mismatches (e.g. {_few(wrong)})")
        raise CheckpointError(
            f"{Path(path).name} does not match the model architecture: {'; '.join(parts)}; "
            "check the file and the reward's architecture options"
        )


def _few(items: list[str], n: int = 3) -> str:
    return ", ".join(items[:n]) + (", ..." if len(items) > n else "")


def check_options(reward: str, options: Mapping[str, Any], accepted: Iterable[str]) -> None:
    """Reject unknown loader options in one line that lists the accepted ones."""
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(
            f"reward {reward} has no option(s) {', '.join(unknown)}; accepted: {', '.join(sorted(accepted)) or 'none'}"
        )


def causal_mask(n: int, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Additive causal attention mask (0 on and below the diagonal, -inf above)."""
    return torch.full((n, n), float("-inf"), device=device, dtype=dtype).triu_(1)
