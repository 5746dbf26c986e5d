"""VideoCrafter2's frame-rate conditioning at run time: MLP(sinusoid(fps)) added to the UNet's time embedding.

The UNet stays a stock diffusers ``UNet3DConditionModel``; the embedding is attached as ``unet.fps_embedding``
and saved beside the UNet (``fps_embedding.safetensors`` + ``fps_embedding.json``, docs/formats.md §1). The
frame rate is an explicit input of every call (``call_unet(..., fps=)``): :class:`fps_input` hooks the
embedding onto ``unet.time_embedding`` for that one call and removes it on exit, so no state is left on the
module between calls. It keeps working when the student adds ``time_embedding.cond_proj`` or peft wraps the
UNet's linears.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError
from ..safeio import load_weights
from .common import OneCallHook

DEFAULT_FPS = 16
FPS_FILE = "fps_embedding.safetensors"
FPS_META = "fps_embedding.json"
FPS_FORMAT = "t2vturbo-fps-embedding"


def sinusoidal_embedding(values: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """[cos, sin] embedding of ``values`` (lvdm ``timestep_embedding``; diffusers flip_sin_to_cos, shift 0)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=values.device) / half)
    args = values.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


class FPSEmbedding(nn.Module):
    """VC2's frame-rate conditioning: MLP(sinusoid(fps)) added to the UNet's time embedding (see
    :class:`fps_input`)."""

    def __init__(self, channels: int, time_embed_dim: int, default_fps: int = DEFAULT_FPS):
        super().__init__()
        self.channels = channels
        self.linear_1 = nn.Linear(channels, time_embed_dim)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(time_embed_dim, time_embed_dim)
        self.default_fps = int(default_fps)

    def forward(self, fps: torch.Tensor) -> torch.Tensor:
        """fps (B,) -> (B, time_embed_dim)."""
        emb = sinusoidal_embedding(fps, self.channels).to(self.linear_1.weight.dtype)
        return self.linear_2(self.act(self.linear_1(emb)))

    def fps_for_batch(self, fps: torch.Tensor | int | None, batch: int, device: torch.device) -> torch.Tensor:
        """``fps`` (an int, one value per batch item, or None for ``default_fps``) as a (batch,) tensor."""
        fps = torch.as_tensor(self.default_fps if fps is None else fps, device=device).reshape(-1)
        if fps.numel() == 1:
            return fps.expand(batch)
        if fps.numel() != batch:
            raise ValueError(f"fps has {fps.numel()} values for a batch of {batch}")
        return fps

    def config(self) -> dict:
        return {"format": FPS_FORMAT, "version": 1, "channels": self.channels,
                "time_embed_dim": self.linear_1.out_features, "default_fps": self.default_fps}


def attach_fps_embedding(unet: nn.Module, fps: FPSEmbedding) -> FPSEmbedding:
    """Attach ``fps`` as ``unet.fps_embedding`` (replacing an old one); calls then pass the frame rate."""
    unet.fps_embedding = fps
    return fps


class fps_input(OneCallHook):  # noqa: N801 - used as a context manager, like torch.no_grad
    """Within the block, the UNet's time embedding output gets ``fps_embedding(fps)`` added (VC2's
    ``emb + fps_embedding(fps)``); a UNet without an fps embedding is left alone. ``fps`` None means the
    embedding's ``default_fps``."""

    def __init__(self, unet: nn.Module, fps: torch.Tensor | int | None):
        net = getattr(unet, "module", unet)  # unwrap DDP
        self.module: FPSEmbedding | None = getattr(net, "fps_embedding", None)
        self.target = net.time_embedding if self.module is not None else None
        self.fps = fps

    def _add(self, module, args, output):
        value = self.module.fps_for_batch(self.fps, output.shape[0], output.device)
        return output + self.module(value).to(output.dtype)

    def register(self):
        return self.target.register_forward_hook(self._add) if self.module is not None else None


def save_fps_embedding(fps: FPSEmbedding, unet_dir: str | Path) -> None:
    """Write ``fps_embedding.safetensors`` + ``fps_embedding.json`` into ``unet_dir`` (beside the UNet)."""
    from safetensors.torch import save_file

    unet_dir = Path(unet_dir)
    state = {k: v.detach().cpu().contiguous() for k, v in fps.state_dict().items()}
    save_file(state, str(unet_dir / FPS_FILE), metadata={"format": FPS_FORMAT})
    (unet_dir / FPS_META).write_text(json.dumps(fps.config(), indent=2) + "\n")


def load_fps_embedding(unet: nn.Module, unet_dir: str | Path) -> bool:
    """If ``unet_dir`` holds a saved fps embedding, attach it to ``unet`` and return True; else return False."""
    unet_dir = Path(unet_dir)
    wfile = unet_dir / FPS_FILE
    if not wfile.is_file():
        return False
    meta_file = unet_dir / FPS_META
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    state = load_weights(wfile)
    try:
        channels = int(meta.get("channels", state["linear_1.weight"].shape[1]))
        dim = int(meta.get("time_embed_dim", state["linear_1.weight"].shape[0]))
    except KeyError:
        raise CheckpointError(f"{wfile} is not an fps embedding (no linear_1.weight); convert the model again "
                              "with `t2vturbo convert vc2`") from None
    fps = FPSEmbedding(channels, dim, int(meta.get("default_fps", DEFAULT_FPS)))
    try:
        fps.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(f"{wfile} does not fit the fps embedding: {str(err).splitlines()[0]}") from None
    param = next(unet.parameters())
    attach_fps_embedding(unet, fps.to(device=param.device, dtype=param.dtype))
    return True
