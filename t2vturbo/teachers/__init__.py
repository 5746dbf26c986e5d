"""Teachers: the parts a teacher hands the rest of t2vturbo, the UNet3D family, and ``load_teacher``."""

from .base import Teacher
from .common import DEFAULTS_FILE
from .fps import FPSEmbedding, attach_fps_embedding, load_fps_embedding, save_fps_embedding
from .loading import load_teacher
from .parts import (
    FALLBACK_FPS,
    FALLBACK_FRAMES,
    VAE_SCALE,
    TeacherParts,
    call_unet,
    decode_latents,
    encode_pixels,
    encode_prompts,
)
from .unet3d import load_diffusers_teacher

__all__ = ["DEFAULTS_FILE", "FALLBACK_FPS", "FALLBACK_FRAMES", "VAE_SCALE", "FPSEmbedding", "Teacher", "TeacherParts",
           "attach_fps_embedding", "call_unet", "decode_latents", "encode_pixels", "encode_prompts",
           "load_diffusers_teacher", "load_fps_embedding", "load_teacher", "save_fps_embedding"]
