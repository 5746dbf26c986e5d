"""The UNet3D family (ModelScope, VideoCrafter2 converted by t2vturbo, the tiny teacher): loading a
diffusers-layout folder (docs/formats.md §1)."""

from __future__ import annotations

from ..schedules import VPSchedule
from .common import load_folder
from .fps import load_fps_embedding
from .parts import VAE_SCALE, TeacherParts


def load_diffusers_teacher(spec: str) -> TeacherParts:
    """Load a ModelScope/diffusers text-to-video folder (unet/, vae/, text_encoder/, tokenizer/, scheduler/)."""
    from diffusers import AutoencoderKL, UNet3DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    how = ("model.teacher in the recipe (distill) or --model (sample, export): a diffusers-layout folder or hub id, "
           "e.g. ali-vilab/text-to-video-ms-1.7b")
    folder = load_folder(spec, {"unet": UNet3DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel,
                                "tokenizer": CLIPTokenizer},
                         "a diffusers text-to-video folder", how, f"pass it with {how}", "cannot load the model",
                         f"check the folder or pass another with {how}")
    root, m = folder.root, folder.modules
    unet, vae, text_encoder, tokenizer = m["unet"], m["vae"], m["text_encoder"], m["tokenizer"]
    extra: dict = {}
    default_fps = None
    # fps-conditioned UNets (VideoCrafter2 converted by t2vturbo) keep the fps embedding beside the UNet
    if load_fps_embedding(unet, root / "unet"):
        default_fps = int(getattr(unet.fps_embedding, "default_fps", 16))
    vae_scale = float(getattr(vae.config, "scaling_factor", VAE_SCALE))
    return TeacherParts(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                        schedule=VPSchedule.from_scheduler_config(folder.scheduler_config), name=str(spec),
                        vae_scale=vae_scale, default_fps=default_fps, extra=extra,
                        stored_defaults=folder.stored_defaults)
