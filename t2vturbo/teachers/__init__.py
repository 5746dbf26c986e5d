"""Teachers: the :class:`Teacher` protocol (the only door from the core to a model family), the families
(:mod:`.unet3d`: ModelScope, VideoCrafter2, the tiny teacher; :mod:`.wan`: Wan2.1), and ``load_teacher``."""

from .base import Teacher
from .common import DEFAULTS_FILE
from .fps import FPSEmbedding, attach_fps_embedding, load_fps_embedding, save_fps_embedding
from .loading import load_teacher
from .unet3d import (
    FALLBACK_FPS,
    FALLBACK_FRAMES,
    VAE_SCALE,
    UNet3DTeacher,
    call_unet,
    decode_latents,
    encode_pixels,
    encode_prompts,
    load_diffusers_teacher,
)

__all__ = ["DEFAULTS_FILE", "FALLBACK_FPS", "FALLBACK_FRAMES", "VAE_SCALE", "FPSEmbedding", "Teacher", "UNet3DTeacher",
           "attach_fps_embedding", "call_unet", "decode_latents", "encode_pixels", "encode_prompts",
           "load_diffusers_teacher", "load_fps_embedding", "load_teacher", "save_fps_embedding"]
