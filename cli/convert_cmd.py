"""``t2vturbo convert vc2 MODEL_CKPT --out DIR``: turn an original checkpoint into a diffusers-layout folder once."""

from __future__ import annotations

from pathlib import Path

import typer

from .common import console, quiet_libraries, user_errors
from .main import app

FORMATS = ("vc2",)
DTYPES = ("auto", "float32", "float16", "bfloat16")


@app.command()
@user_errors
def convert(
    source_format: str = typer.Argument(..., metavar="FORMAT", help="Checkpoint format: vc2 (VideoCrafter2 model.ckpt)."),
    checkpoint: Path = typer.Argument(..., metavar="MODEL_CKPT", help="The original checkpoint, e.g. VideoCrafter2's model.ckpt."),
    out: Path = typer.Option(..., "--out", "-o", help="Folder to write (unet/ vae/ text_encoder/ tokenizer/ scheduler/)."),
    dtype: str = typer.Option("auto", "--dtype", help="Dtype of the saved weights: auto (as the checkpoint's UNet), "
                              "float32, float16 or bfloat16."),
    default_fps: int = typer.Option(16, "--default-fps", help="fps used when a command gives none (VC2: 16)."),
    force: bool = typer.Option(False, "--force", help="Replace --out if it already exists."),
) -> None:
    """Convert an original checkpoint to a diffusers-layout folder that --model / model.teacher accept.

    Every key is checked (all used, every shape right); the folder is written atomically.
    """
    from t2vturbo.errors import ConfigError

    if source_format not in FORMATS:
        raise ConfigError(f"unknown format {source_format!r}; supported: {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise ConfigError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if out.exists() and not force:
        raise ConfigError(f"{out} already exists; choose another --out or pass --force to replace it")
    quiet_libraries()
    import torch

    from t2vturbo.convert import UNET_PREFIX, convert_vc2_state, read_vc2_state, save_converted

    console.print(f"reading {checkpoint} ...", highlight=False)
    state = read_vc2_state(checkpoint)
    if dtype == "auto":
        save_dtype = next(v.dtype for k, v in state.items() if k.startswith(UNET_PREFIX) and v.is_floating_point())
    else:
        save_dtype = getattr(torch, dtype)
    parts = convert_vc2_state(state, default_fps=default_fps)
    del state
    n = sum(p.numel() for p in parts.unet.parameters())
    console.print(f"converted: UNet {n / 1e9:.3f}e9 params (+ fps embedding), VAE, "
                  f"{parts.text_encoder.config.num_hidden_layers}-layer CLIP text encoder", highlight=False)
    save_converted(parts, out, dtype=save_dtype)
    console.print(f"[green]wrote[/] {out} ({str(save_dtype).replace('torch.', '')}; use it as --model {out} or model.teacher: {out})", highlight=False)
