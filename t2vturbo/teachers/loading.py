"""``load_teacher(spec)``: a registry of model families, each a test on the spec (a name, a folder, a hub id) and a
loader. The built-in ones: the embedded ``tiny`` (UNet3D), ``tiny-wan``, ``tiny-wan22`` and ``tiny-wan22-5b``, a
Wan2.2 folder or hub id (asked first), a Wan folder or ``Wan-AI/...`` hub id, and any other diffusers-layout folder
or hub id as UNet3D. A new family registers itself with :func:`register_family` and is then loaded, distilled,
sampled and exported by the core unchanged."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .base import Teacher


@dataclass(frozen=True)
class Family:
    """A model family: its Teacher class, which specs it takes, and how to load one."""

    name: str
    teacher_class: type[Teacher]
    matches: Callable[[str], bool]
    load: Callable[[str], Teacher]
    #: load without building the text encoder (training from prepared latents); None: ``load``, then free it
    load_without_text: Callable[[str], Teacher] | None = None
    #: what the dry run says of a spec (the keys of :attr:`Teacher.plan`, and optionally ``files``: what the teacher
    #: is read from); None: the teacher class's ``plan``
    describe: Callable[[str], dict[str, str]] | None = None


_FAMILIES: list[Family] = []


def register_family(family: Family) -> Family:
    """Put ``family`` first in line: the first family whose ``matches(spec)`` is true loads a spec."""
    if not _FAMILIES:
        _register_builtin()
    _FAMILIES.insert(0, family)
    return family


def unregister_family(name: str) -> None:
    _FAMILIES[:] = [f for f in _FAMILIES if f.name != name]


def family_of(spec: str) -> Family:
    """The family a teacher spec names, decided without loading weights."""
    if not _FAMILIES:
        _register_builtin()
    return next(f for f in _FAMILIES if f.matches(spec))


def _register_builtin() -> None:
    from .unet3d import UNet3DTeacher, load_diffusers_teacher
    from .wan import WanTeacher, build_tiny_wan, is_wan_spec, load_wan_teacher
    from .wan22 import (
        Wan22Teacher,
        build_tiny_wan22,
        build_tiny_wan22_5b,
        describe_wan22,
        is_wan22_spec,
        load_wan22_teacher,
    )

    def load_tiny(spec: str) -> Teacher:
        from ..tiny import load_tiny_teacher

        return load_tiny_teacher()

    # asked in this order; the catch-all UNet3D family last
    _FAMILIES.extend([
        Family("tiny", UNet3DTeacher, lambda spec: spec == "tiny", load_tiny),
        Family("tiny-wan", WanTeacher, lambda spec: spec == "tiny-wan", lambda spec: build_tiny_wan()),
        Family("tiny-wan22", Wan22Teacher, lambda spec: spec == "tiny-wan22", lambda spec: build_tiny_wan22(),
               describe=describe_wan22),
        Family("tiny-wan22-5b", Wan22Teacher, lambda spec: spec == "tiny-wan22-5b",
               lambda spec: build_tiny_wan22_5b(), describe=describe_wan22),
        # before the Wan2.1 family, which would take a Wan2.2 folder or hub id too
        Family("wan2.2", Wan22Teacher, is_wan22_spec, load_wan22_teacher,
               lambda spec: load_wan22_teacher(spec, text_encoder=False), describe=describe_wan22),
        Family("wan", WanTeacher, is_wan_spec, load_wan_teacher,
               lambda spec: load_wan_teacher(spec, text_encoder=False)),
        Family("unet3d", UNet3DTeacher, lambda spec: True, load_diffusers_teacher,
               lambda spec: load_diffusers_teacher(spec, text_encoder=False)),
    ])


def load_teacher(spec: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, *,
                 text_table: dict[str, torch.Tensor] | None = None) -> Teacher:
    """Load a teacher from ``tiny`` / ``tiny-wan`` (built in), a diffusers-layout folder, a hub id in the local
    cache (``Wan-AI/...`` ids are Wan), or a spec a registered family takes; frozen and in eval mode.

    ``text_table`` (prompt -> text-encoder states, as a prepared dataset stores them): the teacher answers
    ``encode_text`` from it and its text encoder is never built (or, for a family that cannot skip it, freed).

    Raises:
        MissingWeightError: one line naming what to download and where to put it.
    """
    family = family_of(spec)
    if text_table is None:
        return family.load(spec).freeze().to(device=device, dtype=dtype)
    teacher = (family.load_without_text or family.load)(spec)
    teacher.release_text_encoder({p: v.to(device=device, dtype=dtype) for p, v in text_table.items()})
    return teacher.freeze().to(device=device, dtype=dtype)


def describe_family(spec: str) -> dict[str, str]:
    """What the dry run says of a family: its default LoRA targets and its solver (``{n}``: the grid size), and,
    where the family says, the files its teacher is read from (``files``)."""
    family = family_of(spec)
    return dict(family.describe(spec) if family.describe is not None else family.teacher_class.plan)
