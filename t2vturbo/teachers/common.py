"""Pieces every teacher family shares: moving its modules, and a forward hook that lives for one call."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn


def move_modules(modules: Iterable[nn.Module], device=None, dtype=None) -> None:
    """``.to(device, dtype)`` only the modules whose first parameter differs (diffusers prints a float32 notice
    on every cast of a model with float32-kept modules, even a no-op one)."""
    for m in modules:
        if m is None:  # freed (train.cache_text drops the text encoder)
            continue
        p = next(m.parameters())
        if (device is not None and p.device != torch.device(device)) or (dtype is not None and p.dtype != dtype):
            m.to(device=device, dtype=dtype)


class OneCallHook:
    """A context manager that registers one forward (pre-)hook on entry and removes it on exit, so an input such
    as VC2's fps, Wan's guidance or v2's motion condition reaches a module for one call and leaves no state.
    Subclasses implement :meth:`register`."""

    def register(self) -> Any:
        """Register the hook; return its handle, or None when this call needs none."""
        raise NotImplementedError

    def __enter__(self):
        self.handle = self.register()
        return self

    def __exit__(self, *exc):
        if getattr(self, "handle", None) is not None:
            self.handle.remove()
            self.handle = None
        return False


#: the file in a model folder that holds its sampling defaults (frames, fps, guidance)
DEFAULTS_FILE = "t2vturbo_defaults.json"


@dataclass
class FolderParts:
    """What a diffusers-layout model folder holds: its root, the loaded components by subfolder, the scheduler
    config and the stored sampling defaults (both {} when absent)."""

    root: Path
    modules: dict[str, Any]
    scheduler_config: dict
    stored_defaults: dict


def load_folder(spec: str, classes: dict[str, Any], what: str, how: str, fix: str, cannot: str,
                load_fix: str | None = None, skip: tuple[str, ...] = ()) -> FolderParts:
    """Resolve ``spec`` (folder or cached hub id; ``how`` names where it is given) and ``from_pretrained`` each
    ``classes[subfolder]`` (those named in ``skip`` are neither required nor loaded: None).

    One-line errors: a missing subfolder names ``what`` kind of folder it is and ``fix``; a component that fails
    to load gives ``cannot``, its first line, and ``load_fix`` (default ``fix``).
    """
    from ..errors import MissingWeightError
    from ..hub import resolve_pretrained_dir

    classes = {sub: cls for sub, cls in classes.items() if sub not in skip}
    subs = " ".join(f"{s}/" for s in classes)
    root = Path(resolve_pretrained_dir(spec, f"{subs} scheduler/", how))
    for sub in classes:
        if not (root / sub).is_dir():
            raise MissingWeightError(f"{root} has no {sub}/ folder; {what} needs {subs} ({fix})")
    try:
        modules = {sub: cls.from_pretrained(root / sub) for sub, cls in classes.items()}
        modules.update({sub: None for sub in skip})
    except OSError as err:
        first = str(err).splitlines()[0]
        raise MissingWeightError(f"{cannot} at {root}: {first}; {load_fix or fix}") from None
    sched_path = root / "scheduler" / "scheduler_config.json"
    defaults_path = root / DEFAULTS_FILE
    return FolderParts(root, modules, json.loads(sched_path.read_text()) if sched_path.is_file() else {},
                       json.loads(defaults_path.read_text()) if defaults_path.is_file() else {})
