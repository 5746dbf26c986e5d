"""Safe loading and atomic writing of weights.

Everything we read that is a pickle goes through ``torch.load(weights_only=True)``; everything we
write is safetensors or JSON/YAML, written to a temporary name in the same folder and renamed, so
a crash at any instant leaves the previous file (or folder) intact.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import CheckpointError, UnsafeCheckpointError

PICKLE_SUFFIXES = {".pt", ".pth", ".ckpt", ".bin"}


def load_torch_file(path: str | os.PathLike, map_location: str = "cpu") -> Any:
    """Load a ``.pt/.pth/.ckpt/.bin`` pickle without allowing code execution.

    Raises:
        CheckpointError: missing, truncated or corrupt file.
        UnsafeCheckpointError: the pickle references globals outside torch's safe set.
    """
    import torch

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint is empty (0 bytes): {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=_can_mmap(path))
    except pickle.UnpicklingError as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        if "weights_only" in str(err) or "Unsupported global" in str(err) or "GLOBAL" in str(err):
            raise UnsafeCheckpointError(
                f"refused to load {path}: it is a pickle that would run code or build objects outside "
                "plain tensors (only weights_only-safe files are loaded); re-save it as safetensors "
                "from a trusted environment"
            ) from None
        raise CheckpointError(f"cannot read checkpoint {path}: {msg}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({msg}); download it again") from None


def _can_mmap(path: Path) -> bool:
    # mmap only works for the zip-based format (torch >= 1.6 files); legacy files fall back.
    try:
        return zipfile.is_zipfile(path)
    except OSError:
        return False


def load_weights(path: str | os.PathLike) -> dict[str, Any]:
    """Load a flat tensor dict from safetensors or a weights-only pickle."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        if not path.is_file():
            raise CheckpointError(f"weights not found: {path}")
        try:
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError) as err:
            raise CheckpointError(f"weights file {path} is truncated or corrupt ({err}); write it again") from None
    return load_torch_file(path)


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it onto ``target``.

    Works for a file or a folder. On error the temporary is removed and ``target`` is untouched.
    """
    target = Path(target)
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent))
    tmp_target = tmp / target.name
    try:
        yield tmp_target
        if not tmp_target.exists():
            raise RuntimeError(f"nothing was written for {target}")
        if tmp_target.is_file():
            with open(tmp_target, "rb") as fh:
                os.fsync(fh.fileno())
        _usual_permissions(tmp_target)
        if target.is_dir() and not target.is_symlink():
            # Swap folders: move the old one aside first, then remove it once the new one is in place.
            old = tmp / (target.name + ".old")
            os.replace(target, old)
            os.replace(tmp_target, target)
        else:
            os.replace(tmp_target, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _usual_permissions(path: Path) -> None:
    """What a plain ``open()`` / ``mkdir()`` would give under the umask (0644 / 0755 by default): temporary files
    and some writers (safetensors) create 0600, which other users of a shared run folder could not read."""
    mask = os.umask(0)
    os.umask(mask)
    items = [path, *path.rglob("*")] if path.is_dir() else [path]
    for item in items:
        if item.is_symlink():
            continue
        os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~mask)


def save_safetensors(tensors: dict[str, Any], path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """Atomically write a safetensors file (contiguous CPU copies of the tensors)."""
    from safetensors.torch import save_file

    clean = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(clean, str(tmp), metadata=metadata)


def save_json(obj: Any, path: str | os.PathLike) -> None:
    """Atomically write pretty JSON."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")
