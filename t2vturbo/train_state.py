"""Training checkpoints: student, optimizer, LR scheduler, EMA, step, data position and RNG states.

A checkpoint is a folder ``checkpoints/step-000500/`` with ``tensors.safetensors`` (every tensor) and
``state.json`` (everything else, tensors replaced by references). It is written under a temporary name and
renamed, so a kill at any instant leaves earlier checkpoints intact; a folder without ``state.json`` is
never considered. No pickle is written or read.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError
from .safeio import atomic_path, load_weights

_STEP_DIR = re.compile(r"^step-(\d+)$")
TENSOR_REF = "__tensor__"


def flatten(obj: Any, tensors: dict[str, torch.Tensor], prefix: str = "t") -> Any:
    """Replace every tensor in a nested structure by a reference into ``tensors``."""
    if isinstance(obj, torch.Tensor):
        key = f"{prefix}.{len(tensors)}"
        tensors[key] = obj.detach().cpu().contiguous()
        return {TENSOR_REF: key}
    if isinstance(obj, dict):
        if any(not isinstance(k, (str, int)) for k in obj):
            raise TypeError("only str/int dict keys can be checkpointed")
        return {"__dict__": [[k, flatten(v, tensors, prefix)] for k, v in obj.items()]}
    if isinstance(obj, (list, tuple)):
        return {"__list__" if isinstance(obj, list) else "__tuple__": [flatten(v, tensors, prefix) for v in obj]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot checkpoint a {type(obj).__name__}")


def unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if TENSOR_REF in obj:
            return tensors[obj[TENSOR_REF]]
        if "__dict__" in obj:
            return {k: unflatten(v, tensors) for k, v in obj["__dict__"]}
        if "__list__" in obj:
            return [unflatten(v, tensors) for v in obj["__list__"]]
        if "__tuple__" in obj:
            return tuple(unflatten(v, tensors) for v in obj["__tuple__"])
    return obj


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": _py_state(random.getstate())}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np

        s = np.random.get_state()
        state["numpy"] = [s[0], torch.from_numpy(s[1].astype("int64")), int(s[2]), int(s[3]), float(s[4])]
    except ImportError:  # pragma: no cover
        pass
    return state


def _py_state(s):
    return [s[0], list(s[1]), s[2]]


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy().astype("uint32"), pos, has_gauss, cached))


def save_checkpoint(folder: Path, state: dict[str, Any]) -> Path:
    """Atomically write ``state`` (nested dicts of tensors and JSON values) as a checkpoint folder."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    skeleton = flatten(state, tensors)
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        save_file(tensors, str(tmp / "tensors.safetensors"))
        (tmp / "state.json").write_text(json.dumps(skeleton))
    return folder


def load_checkpoint(folder: Path) -> dict[str, Any]:
    folder = Path(folder)
    meta = folder / "state.json"
    if not meta.is_file():
        raise CheckpointError(f"{folder} is not a complete checkpoint (no state.json)")
    try:
        skeleton = json.loads(meta.read_text())
    except json.JSONDecodeError:
        raise CheckpointError(f"{meta} is corrupt; delete {folder} to resume from an earlier checkpoint") from None
    return unflatten(skeleton, load_weights(folder / "tensors.safetensors"))


def list_checkpoints(root: Path) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root``, oldest first."""
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and (p / "state.json").is_file() and (p / "tensors.safetensors").is_file():
            found.append((int(m.group(1)), p))
    return sorted(found)


def prune_checkpoints(root: Path, keep: int) -> None:
    for _, p in list_checkpoints(root)[:-keep]:
        shutil.rmtree(p, ignore_errors=True)
    # leftovers of interrupted writes
    for p in root.glob(".step-*.tmp"):
        shutil.rmtree(p, ignore_errors=True)


def checkpoint_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:07d}"
