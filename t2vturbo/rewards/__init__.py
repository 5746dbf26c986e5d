"""Reward registry: a name maps to a loader; heavy imports live inside each loader.

A reward is any ``torch.nn.Module`` subclass of :class:`RewardModel`: it takes frames as a float tensor in
[0, 1] of shape (B, T, 3, H, W) and a list of B prompts, and returns one differentiable score per video.
Image rewards (``kind == "image"``) average over frames; video rewards (``kind == "video"``) see the clip
(``num_frames`` evenly strided frames, chosen by :func:`reward_frame_indices`).

Register your own with :func:`register_reward`, or pass ``module.path:factory`` as the name.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ..errors import ConfigError, UnknownRewardError

RewardKind = Literal["image", "video"]


class RewardModel(nn.Module):
    """Base class. Subclasses set ``kind`` and ``num_frames`` and implement :meth:`forward`.

    A reward whose text side is a separate tower can name it for :meth:`cache_prompts` (``train.cache_text``):
    ``text_method`` is the method that turns prompts into the text features ``forward`` uses, ``text_modules``
    the dotted names of the submodules / parameters only that method uses."""

    kind: RewardKind = "image"
    #: frames a video reward expects (None = any number; image rewards: None)
    num_frames: int | None = None
    text_method: str | None = None
    text_modules: tuple[str, ...] = ()

    def forward(self, frames: torch.Tensor, prompts: list[str]) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def cache_prompts(self, prompts: list[str], batch_size: int = 32) -> int:
        """Encode every prompt once, keep the features, and free the text tower (its weights are never needed
        again): from then on ``text_method`` answers from the cache, and a prompt outside it is a one-line error.
        Returns the bytes of weights freed (0 when this reward has no separable text tower: nothing changes)."""
        if self.text_method is None or not self.text_modules:
            return 0
        table = prompt_table(getattr(self, self.text_method), prompts, batch_size)
        freed = 0
        for dotted in self.text_modules:
            owner_name, _, attr = dotted.rpartition(".")
            owner = self.get_submodule(owner_name) if owner_name else self
            value = getattr(owner, attr, None)
            if value is None:
                continue
            tensors = value.parameters() if isinstance(value, nn.Module) else [value]
            freed += sum(t.numel() * t.element_size() for t in tensors)
            delattr(owner, attr)
            setattr(owner, attr, None)
        setattr(self, self.text_method, cached_lookup(table, "this reward's text cache"))
        self._prompt_cache = table
        return freed


def return_freed_memory() -> None:
    """Hand freed heap memory back to the OS (glibc's ``malloc_trim``; a no-op elsewhere). Freed weights of a few
    MB each come from the heap once glibc's mmap threshold has grown, and stay resident without it: at mid size,
    of the 484 MiB of reward text towers that ``train.cache_text`` frees, 168 MiB left the process without the
    trim and 465 MiB with it."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl): the allocator keeps its own counsel
        pass


def prompt_table(encode: Callable[[list[str]], torch.Tensor], prompts: list[str],
                 batch_size: int = 32) -> dict[str, torch.Tensor]:
    """{prompt: features} for each distinct prompt, encoded by ``encode`` in batches, without gradient."""
    unique = list(dict.fromkeys(prompts))
    with torch.no_grad():
        feats = [encode(unique[i : i + batch_size]) for i in range(0, len(unique), batch_size)]
    return dict(zip(unique, torch.cat(feats).detach(), strict=True))


def cached_lookup(table: dict[str, torch.Tensor], what: str) -> Callable[[list[str]], torch.Tensor]:
    """A text method answering from ``table`` (prompt -> features): the stacked features of a batch, and a
    one-line error for a prompt outside it (``train.cache_text``)."""

    def lookup(batch: list[str]) -> torch.Tensor:
        missing = next((p for p in batch if p not in table), None)
        if missing is not None:
            raise ConfigError(f"prompt {missing!r} is not in {what} (train.cache_text encodes the data's captions "
                              "once and frees the text encoders); set train.cache_text=false")
        return torch.stack([table[p] for p in batch])

    return lookup


@dataclass(frozen=True)
class RewardSpec:
    name: str
    loader: Callable[..., RewardModel]
    kind: RewardKind
    description: str


_REGISTRY: dict[str, RewardSpec] = {}
_BUILTINS_LOADED = False


def register_reward(name: str, kind: RewardKind, description: str = ""):
    """Decorator: register ``loader(checkpoint=None, device='cpu', dtype=torch.float32, **options) -> RewardModel``."""

    def deco(fn: Callable[..., RewardModel]) -> Callable[..., RewardModel]:
        _REGISTRY[name] = RewardSpec(name=name, loader=fn, kind=kind, description=description or (fn.__doc__ or "").strip().split("\n")[0])
        return fn

    return deco


# Modules that register built-in rewards; a missing module (not written yet / optional) is skipped.
_BUILTIN_MODULES = (
    "t2vturbo.rewards.toy",
    "t2vturbo.rewards.tiny",
    "t2vturbo.rewards.hpsv2",
    "t2vturbo.rewards.clip",
    "t2vturbo.rewards.pickscore",
    "t2vturbo.rewards.viclip",
    "t2vturbo.rewards.internvideo2",
    "t2vturbo.rewards.videoreward",
    "t2vturbo.rewards.hpsv3",
)


def _load_builtins() -> None:
    global _BUILTINS_LOADED
    if _BUILTINS_LOADED:
        return
    _BUILTINS_LOADED = True
    for mod in _BUILTIN_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as err:
            if err.name != mod:
                raise


def available_rewards() -> dict[str, RewardSpec]:
    """All registered rewards, built-ins included."""
    _load_builtins()
    return dict(sorted(_REGISTRY.items()))


def reward_spec(name: str) -> RewardSpec:
    """The spec for ``name`` (registry name or ``module:factory``), without loading weights."""
    _load_builtins()
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        mod_name, _, attr = name.partition(":")
        try:
            factory = getattr(importlib.import_module(mod_name), attr)
        except (ImportError, AttributeError) as err:
            raise UnknownRewardError(f"cannot import reward factory {name}: {err}") from None
        kind = getattr(factory, "kind", None) or "image"
        return RewardSpec(name=name, loader=factory, kind=kind, description=f"user factory {name}")
    known = ", ".join(sorted(_REGISTRY))
    raise UnknownRewardError(f"unknown reward '{name}'; known rewards: {known} (or give module.path:factory)")


def load_reward(
    name: str,
    checkpoint: str | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    **options,
) -> RewardModel:
    """Build a reward by registry name (or ``module:factory``), frozen, in eval mode, on ``device``.

    Args:
        name: registry name such as ``hpsv2.1`` or ``viclip``, or ``package.module:factory``.
        checkpoint: explicit weight path; else the loader looks in the HF cache, else raises MissingWeightError.
        device, dtype: where the reward runs.
        options: loader-specific options (e.g. a smaller architecture for tests).
    """
    spec = reward_spec(name)
    model = spec.loader(checkpoint=checkpoint, device=device, dtype=dtype, **options)
    if not isinstance(model, nn.Module):
        raise UnknownRewardError(f"reward factory {name} returned {type(model).__name__}, expected a torch.nn.Module")
    if not hasattr(model, "kind"):
        model.kind = spec.kind
    model.requires_grad_(False)
    model.eval()
    return model.to(device=device)


def strided_frame_indices(total: int, n: int | None, repeat: bool = False) -> list[int]:
    """``n`` evenly strided frame indices out of ``total``. A clip of ``n`` frames or fewer gives all of its
    frames, or with ``repeat`` (a video reward that needs exactly ``n``) ``n`` indices with frames repeated."""
    if n is None or (total <= n and not repeat):
        return list(range(total))
    return [int(i * total / n) for i in range(n)]


#: image rewards score this many random frames of a training clip when the recipe gives none (the paper's M)
IMAGE_REWARD_FRAMES = 6


def reward_frame_indices(total: int, model: nn.Module, count: int | None = None,
                         generator: torch.Generator | None = None) -> list[int]:
    """The frames a reward scores out of a clip of ``total`` frames: one rule for training and scoring.

    A video reward: ``count`` (else the model's own ``num_frames``, else all) evenly strided frames, repeated for a
    clip shorter than that; or, where the model has one, its own ``frame_indices(total, count)``. An image reward:
    with a ``generator`` (training) ``count`` (default :data:`IMAGE_REWARD_FRAMES`) random frames; without one
    (scoring) every frame, or ``count`` strided ones.
    """
    if getattr(model, "kind", "image") == "video":
        own_rule = getattr(model, "frame_indices", None)
        if own_rule is not None:  # a video reward that samples as its reference does (videoreward)
            return own_rule(total, count)
        return strided_frame_indices(total, count or getattr(model, "num_frames", None) or total, repeat=True)
    if generator is not None:
        m = min(count or IMAGE_REWARD_FRAMES, total)
        return sorted(torch.randperm(total, generator=generator)[:m].tolist())
    return strided_frame_indices(total, count) if count and total > count else list(range(total))
