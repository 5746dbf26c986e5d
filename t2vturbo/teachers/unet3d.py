"""The UNet3D family (ModelScope, VideoCrafter2 converted by t2vturbo, the tiny teacher): loading a
diffusers-layout folder (docs/formats.md §1)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import MissingWeightError
from ..hub import resolve_pretrained_dir
from ..schedules import VPSchedule
from .fps import load_fps_embedding
from .parts import DEFAULTS_FILE, VAE_SCALE, TeacherParts


def load_diffusers_teacher(spec: str) -> TeacherParts:
    """Load a ModelScope/diffusers text-to-video folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/)."""
    from diffusers import AutoencoderKL, UNet3DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    how = ("model.teacher in the recipe (distill) or --model (sample, export): a diffusers-layout folder or hub id, "
           "e.g. ali-vilab/text-to-video-ms-1.7b")
    root = Path(resolve_pretrained_dir(spec, "unet/ vae/ text_encoder/ tokenizer/ scheduler/", how))
    for sub in ("unet", "vae", "text_encoder", "tokenizer"):
        if not (root / sub).is_dir():
            raise MissingWeightError(f"{root} has no {sub}/ folder; a diffusers text-to-video folder needs "
                                     f"unet/ vae/ text_encoder/ tokenizer/ (pass it with {how})")
    try:
        unet = UNet3DConditionModel.from_pretrained(root / "unet")
        vae = AutoencoderKL.from_pretrained(root / "vae")
        text_encoder = CLIPTextModel.from_pretrained(root / "text_encoder")
        tokenizer = CLIPTokenizer.from_pretrained(root / "tokenizer")
    except OSError as err:
        first = str(err).splitlines()[0]
        raise MissingWeightError(f"cannot load the model at {root}: {first}; check the folder or pass another with {how}") from None
    sched_cfg_path = root / "scheduler" / "scheduler_config.json"
    sched_cfg = json.loads(sched_cfg_path.read_text()) if sched_cfg_path.is_file() else {}
    extra: dict = {}
    default_fps = None
    # fps-conditioned UNets (VideoCrafter2 converted by t2vturbo) keep the fps embedding beside the UNet
    if load_fps_embedding(unet, root / "unet"):
        default_fps = int(getattr(unet.fps_embedding, "default_fps", 16))
    vae_scale = float(getattr(vae.config, "scaling_factor", VAE_SCALE))
    defaults_path = root / DEFAULTS_FILE
    stored = json.loads(defaults_path.read_text()) if defaults_path.is_file() else {}
    return TeacherParts(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                        schedule=VPSchedule.from_scheduler_config(sched_cfg), name=str(spec),
                        vae_scale=vae_scale, default_fps=default_fps, extra=extra, stored_defaults=stored)
