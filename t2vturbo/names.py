"""Names users type or read: dtype names, and file names made from prompts."""

from __future__ import annotations

import torch

from .errors import ConfigError

#: the dtypes a recipe, ``--dtype`` or an export may name
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def torch_dtype(name: str, option: str = "dtype") -> torch.dtype:
    """The torch dtype called ``name``; a one-line error naming ``option`` and the choices otherwise."""
    if name not in DTYPES:
        raise ConfigError(f"{option} must be one of {', '.join(DTYPES)}, got {name!r}")
    return DTYPES[name]


def resolve_dtype(name: str, device: str) -> torch.dtype:
    """``auto`` (float16 on CUDA, float32 elsewhere) or a name of :data:`DTYPES`."""
    if name == "auto":
        return torch.float16 if str(device).startswith("cuda") else torch.float32
    return torch_dtype(name, "--dtype (or auto)")


def process_device(device: str) -> str:
    """``device`` for this process: ``auto`` is cuda if there is one, else cpu; a bare ``cuda`` under torchrun /
    accelerate launch is this process's GPU (``cuda:LOCAL_RANK``)."""
    import os

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if str(device) == "cuda":
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def slugify(text: str, limit: int = 60, sep: str = "-") -> str:
    """A file-name-safe form of ``text``: lower case, runs of other characters become one ``sep``."""
    slug = "".join(c if c.isalnum() else sep for c in text.lower())
    while sep + sep in slug:
        slug = slug.replace(sep + sep, sep)
    return slug.strip(sep)[:limit] or "video"


def vbench_name(prompt: str, index: int, suffix: str = ".mp4") -> str:
    """VBench's file name for video ``index`` of ``prompt``: ``{prompt}-{index}.mp4`` (the prompt as written, a
    path separator replaced so it stays one file name)."""
    return f"{prompt.strip().replace('/', '_').replace(chr(0), '')}-{index}{suffix}"
