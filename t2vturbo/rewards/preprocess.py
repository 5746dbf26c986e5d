"""Differentiable image preprocessing shared by the reward models (docs/formats.md §6).

Every function takes and returns a float tensor (N, 3, H, W); gradients flow back to the pixels. Resizes are
bicubic with antialiasing, exactly what ``torchvision.transforms.functional.resize`` does on tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bicubic, antialiased resize to (height, width); no clamping (like torchvision on tensors)."""
    if tuple(images.shape[-2:]) == tuple(size):
        return images
    return F.interpolate(images, size=size, mode="bicubic", align_corners=False, antialias=True)


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    """Crop the central size x size window (torchvision's rounding)."""
    h, w = images.shape[-2:]
    if (h, w) == (size, size):
        return images
    if h < size or w < size:
        raise ValueError(f"cannot centre-crop {h}x{w} frames to {size}x{size}")
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return images[..., top : top + size, left : left + size]


def normalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    m = images.new_tensor(mean).view(1, -1, 1, 1)
    s = images.new_tensor(std).view(1, -1, 1, 1)
    return (images - m) / s


def resize_longest_and_pad(images: torch.Tensor, size: int = 224, fill: float = 0.0) -> torch.Tensor:
    """HPSv2: scale the longest side to ``size``, then pad the short side equally on both ends with ``fill``."""
    h, w = images.shape[-2:]
    scale = size / max(h, w)
    if scale != 1.0:
        new_h, new_w = round(h * scale), round(w * scale)
        images = resize(images, (new_h, new_w))
    pad_h, pad_w = size - images.shape[-2], size - images.shape[-1]
    if pad_h or pad_w:
        # (left, right, top, bottom); the extra pixel of an odd pad goes right/bottom, as open_clip does.
        images = F.pad(images, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=fill)
    return images


def resize_short_side_and_crop(images: torch.Tensor, size: int = 224) -> torch.Tensor:
    """ViCLIP / InternVideo2 ``ResizeCropMinSize``: scale the short side to ``size``, then crop ``size`` x ``size``.

    The reference crops at a random place; we crop the centre so a score is deterministic. Frames whose short
    side already equals ``size`` are not resized (the reference skips resize and crop when the scale is 1; we
    still crop non-square frames so the model always sees ``size`` x ``size``).
    """
    h, w = images.shape[-2:]
    scale = size / min(h, w)
    if scale != 1.0:
        images = resize(images, (round(h * scale), round(w * scale)))
    return center_crop(images, size)


def clip_pixels(images: torch.Tensor, size: int = 224) -> torch.Tensor:
    """CLIP score / PickScore: resize to size x size (aspect not kept), centre-crop, CLIP mean/std."""
    return normalize(center_crop(resize(images, (size, size)), size), CLIP_MEAN, CLIP_STD)


def hps_pixels(images: torch.Tensor, size: int = 224) -> torch.Tensor:
    """HPSv2: resize longest side, centre-pad with 0, CLIP mean/std."""
    return normalize(resize_longest_and_pad(images, size), CLIP_MEAN, CLIP_STD)


def viclip_pixels(images: torch.Tensor, size: int = 224) -> torch.Tensor:
    """ViCLIP / InternVideo2: short side to ``size``, crop, ImageNet mean/std."""
    return normalize(resize_short_side_and_crop(images, size), IMAGENET_MEAN, IMAGENET_STD)
