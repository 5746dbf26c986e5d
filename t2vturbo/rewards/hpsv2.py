"""HPSv2 / HPSv2.1 (Human Preference Score): open_clip ViT-H-14 fine-tuned on human preferences.

The official files ``HPS_v2_compressed.pt`` / ``HPS_v2.1_compressed.pt`` (hub repo xswu/HPSv2) hold
``{"state_dict": <open_clip CLIP state dict>}``; we load them with open_clip directly (not the ``hpsv2``
package). Frames are resized on the longest side to 224, centre-padded with black, CLIP-normalised.
"""

from __future__ import annotations

import torch

from ..hub import resolve_file
from . import register_reward
from .clip import OPEN_CLIP_OPTIONS, OpenClipReward, load_open_clip_model, open_clip_config
from .loading import check_options
from .preprocess import hps_pixels

HPS_HUB_REPO = "xswu/HPSv2"


def _load_hps(name: str, filename: str, checkpoint, device, dtype, options) -> OpenClipReward:
    check_options(name, options, OPEN_CLIP_OPTIONS)
    path = resolve_file(checkpoint, HPS_HUB_REPO, filename, how=f"--reward-checkpoint {name}=PATH")
    cfg = open_clip_config(options.get("arch", "ViT-H-14"), options.get("model_cfg"))
    model = load_open_clip_model(path, "state_dict", cfg, device=device, dtype=dtype)
    return OpenClipReward(model, hps_pixels)


@register_reward("hpsv2", kind="image", description="HPSv2 human preference score, open_clip ViT-H-14 (image, per frame)")
def load_hpsv2(checkpoint: str | None = None, device="cpu", dtype=torch.float32, **options) -> OpenClipReward:
    """HPSv2. Options: ``arch`` (open_clip config name, default ViT-H-14) or ``model_cfg`` (a config dict)."""
    return _load_hps("hpsv2", "HPS_v2_compressed.pt", checkpoint, device, dtype, options)


@register_reward("hpsv2.1", kind="image", description="HPSv2.1 human preference score, open_clip ViT-H-14 (image, per frame)")
def load_hpsv2_1(checkpoint: str | None = None, device="cpu", dtype=torch.float32, **options) -> OpenClipReward:
    """HPSv2.1 (the reward T2V-Turbo trains with). Options as for ``hpsv2``."""
    return _load_hps("hpsv2.1", "HPS_v2.1_compressed.pt", checkpoint, device, dtype, options)
