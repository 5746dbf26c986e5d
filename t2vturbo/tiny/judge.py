"""Analytic judge of the tiny world: reads colour, shape and motion straight from the pixels.

It is never used for training; it is the ground-truth check of generated videos. Per frame it estimates
the background (median of the border), marks pixels that differ from it by more than half of the frame's
largest difference as the object, and then reads
- colour: mean RGB of the object's core pixels, nearest palette colour;
- shape: best intersection-over-union of the object mask, resampled from its bounding box to a 16x16 grid,
  with a circle, square and triangle filling that grid, summed over frames;
- motion: least-squares slope of the object centroid over frames, dominant axis and sign.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .teacher import COLOURS, SHAPES
from .world import PALETTE, parse_caption

#: a frame whose object differs from the background by less than this (RGB distance) has no object
MIN_CONTRAST = 0.12
#: a centroid slope below this (pixels per frame) counts as no motion
MIN_SPEED = 0.3


#: side of the grid each object's bounding box is resampled to before comparing it with the shape templates
GRID = 16


def _templates(n: int = GRID) -> torch.Tensor:
    """Circle, square, triangle masks (3, n, n) each filling an n x n box."""
    c = (torch.arange(n, dtype=torch.float32) + 0.5) / n * 2 - 1
    y, x = torch.meshgrid(c, c, indexing="ij")
    circle = (x**2 + y**2) <= 1
    square = torch.ones_like(circle)
    triangle = x.abs() <= (y + 1) / 2
    return torch.stack([circle, square, triangle]).float()


def read_videos(videos: torch.Tensor) -> list[dict]:
    """What each video (B, T, 3, H, W) in [0, 1] shows: ``colour``, ``shape``, ``direction`` (None if unreadable)."""
    videos = videos.detach().float().cpu().clamp(0, 1)
    b, t, _, h, w = videos.shape
    frames = videos.reshape(b * t, 3, h, w)
    border = torch.cat([frames[..., 0, :], frames[..., -1, :], frames[..., :, 0], frames[..., :, -1]], dim=-1)
    background = border.median(dim=-1).values  # (N, 3)
    dist = (frames - background[:, :, None, None]).norm(dim=1)  # (N, H, W)
    peak = dist.flatten(1).amax(dim=1)
    mask = (dist > (0.5 * peak)[:, None, None]).float()
    core = (dist > (0.75 * peak)[:, None, None]).float()
    valid = (peak > MIN_CONTRAST).float()  # (N,)

    # colour: mean RGB over the core pixels of every valid frame of a video
    weight = (core * valid[:, None, None]).reshape(b, t, 1, h, w)
    rgb = (videos * weight).sum(dim=(1, 3, 4)) / weight.sum(dim=(1, 3, 4)).clamp_min(1)  # (B, 3)
    palette = torch.tensor([PALETTE[c] for c in COLOURS])
    colour_idx = torch.cdist(rgb, palette).argmin(dim=1)

    # shape: resample each frame's bounding box to GRID x GRID, IoU with the templates, summed over frames
    ys = torch.arange(h, dtype=torch.float32)
    xs = torch.arange(w, dtype=torch.float32)
    rows, cols = mask.amax(dim=2) > 0, mask.amax(dim=1) > 0  # (N, H), (N, W)
    big = 1e4
    y0 = torch.where(rows, ys, big).amin(dim=1)
    y1 = torch.where(rows, ys, -big).amax(dim=1) + 1
    x0 = torch.where(cols, xs, big).amin(dim=1)
    x1 = torch.where(cols, xs, -big).amax(dim=1) + 1
    boxed = valid * ((y1 - y0) >= 3).float() * ((x1 - x0) >= 3).float()
    y0, y1, x0, x1 = (v.clamp(0, max(h, w)) for v in (y0, y1, x0, x1))
    # affine grid: output [-1, 1] maps to the box in align_corners=False normalised coordinates
    theta = torch.zeros(b * t, 2, 3)
    theta[:, 0, 0] = (x1 - x0) / w
    theta[:, 0, 2] = (x0 + x1) / w - 1
    theta[:, 1, 1] = (y1 - y0) / h
    theta[:, 1, 2] = (y0 + y1) / h - 1
    grid = F.affine_grid(theta, (b * t, 1, GRID, GRID), align_corners=False)
    patch = (F.grid_sample(mask[:, None], grid, mode="bilinear", align_corners=False)[:, 0] > 0.5).float()
    tmpl = _templates()
    inter = torch.einsum("nhw,shw->ns", patch, tmpl)
    union = patch.sum(dim=(1, 2))[:, None] + tmpl.sum(dim=(1, 2))[None] - inter
    iou = (inter / union.clamp_min(1)) * boxed[:, None]
    shape_scores = iou.reshape(b, t, -1).sum(dim=1)  # (B, S)
    shape_idx = shape_scores.argmax(dim=1)
    has_shape = shape_scores.sum(dim=1) > 0

    # motion: least-squares slope of the mask centroid over the valid frames
    area = mask.sum(dim=(1, 2)).clamp_min(1)
    cx = ((mask * xs).sum(dim=(1, 2)) / area).reshape(b, t)
    cy = ((mask * ys[:, None]).sum(dim=(1, 2)) / area).reshape(b, t)
    vmask = valid.reshape(b, t)
    tt = torch.arange(t, dtype=torch.float32)[None].expand(b, t)
    n_valid = vmask.sum(dim=1)
    tmean = (tt * vmask).sum(dim=1) / n_valid.clamp_min(1)
    tc = (tt - tmean[:, None]) * vmask
    denom = (tc**2).sum(dim=1).clamp_min(1e-6)
    vx = (tc * cx).sum(dim=1) / denom
    vy = (tc * cy).sum(dim=1) / denom

    out = []
    for i in range(b):
        if n_valid[i] == 0:
            out.append({"colour": None, "shape": None, "direction": None})
            continue
        direction = None
        sx, sy = float(vx[i]), float(vy[i])
        if n_valid[i] >= 2 and max(abs(sx), abs(sy)) >= MIN_SPEED:
            if abs(sx) >= abs(sy):
                direction = "right" if sx > 0 else "left"
            else:
                direction = "down" if sy > 0 else "up"
        out.append({
            "colour": COLOURS[int(colour_idx[i])],
            "shape": SHAPES[int(shape_idx[i])] if has_shape[i] else None,
            "direction": direction,
        })
    return out


def judge_video(video: torch.Tensor) -> dict:
    """What one video (T, 3, H, W) in [0, 1] shows: ``colour``, ``shape``, ``direction``."""
    return read_videos(video[None])[0]


def judge(videos: torch.Tensor, captions: list[str]) -> dict:
    """Score videos (B, T, 3, H, W) in [0, 1] against their captions.

    Returns:
        ``{"per_video": [ {colour, shape, direction, colour_ok, shape_ok, motion_ok, all_ok}, ...],
        "colour": acc, "shape": acc, "motion": acc, "all": acc}`` with accuracies in [0, 1].
    """
    if videos.ndim != 5 or videos.shape[0] != len(captions):
        raise ValueError(f"judge expects videos (B, T, 3, H, W) and B captions, got {tuple(videos.shape)} "
                         f"and {len(captions)} captions")
    per_video = []
    for seen, text in zip(read_videos(videos), captions, strict=True):
        want_c, want_s, want_d = parse_caption(text)
        row = dict(seen, caption=text)
        row["colour_ok"] = seen["colour"] == want_c
        row["shape_ok"] = seen["shape"] == want_s
        row["motion_ok"] = seen["direction"] == want_d
        row["all_ok"] = row["colour_ok"] and row["shape_ok"] and row["motion_ok"]
        per_video.append(row)
    n = max(len(per_video), 1)
    out = {"per_video": per_video}
    for key in ("colour", "shape", "motion", "all"):
        out[key] = sum(r[f"{key}_ok"] for r in per_video) / n
    return out


__all__ = ["judge", "judge_video", "read_videos"]
