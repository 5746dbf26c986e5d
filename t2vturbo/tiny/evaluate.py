"""Evaluate generators on the tiny world: judge accuracies (with bootstrap CIs), both tiny rewards, s/video.

Used by ``scripts/eval_tiny.py`` to reproduce the README table (the paper's Table 2 at toy scale).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .world import all_captions

ATTRIBUTES = ("colour", "shape", "motion", "all")


@dataclass
class Variant:
    """A row of the table: the teacher (DDIM + CFG) or a student folder, sampled with ``steps``."""

    label: str
    mode: str  # "teacher" or "student"
    steps: int
    guidance: float
    student: str | None = None
    teacher: str = "tiny"  # the base model: ``tiny`` (the shipped one) or a folder of the same family


def prompt_set(n: int) -> list[str]:
    """``n`` captions balanced over the world: colour and shape cycle together (every pair once per 12), the
    direction changes every 3 captions and shifts by one each round of 12, so 12 captions hold each colour 3
    times, each shape 4 times and each direction 3 times, and no caption repeats."""
    from .teacher import COLOURS, DIRECTIONS, SHAPES
    from .world import caption

    caps = all_captions()
    if n >= len(caps):
        return caps
    return [caption(COLOURS[i % len(COLOURS)], SHAPES[i % len(SHAPES)], DIRECTIONS[(i // 3 + i // 12) % len(DIRECTIONS)])
            for i in range(n)]


def tiny_rewards() -> dict:
    """The two shipped tiny rewards, by name: the reward columns of the table."""
    from ..rewards import load_reward

    return {name: load_reward(name) for name in ("tiny-image", "tiny-video")}


def bootstrap_ci(hits: list[bool], resamples: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of 0/1 outcomes."""
    x = torch.tensor([float(h) for h in hits])
    if len(x) == 0:
        return (0.0, 0.0)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(x), (resamples, len(x)), generator=gen)
    means = x[idx].mean(dim=1).sort().values
    lo = means[int((1 - level) / 2 * (resamples - 1))]
    hi = means[int((1 + level) / 2 * (resamples - 1))]
    return float(lo), float(hi)


def score_videos(videos: torch.Tensor, captions: list[str], rewards: dict) -> dict:
    """Judge accuracies, their 95% CIs and mean reward scores of videos (B, T, 3, H, W) in [0, 1]."""
    from .judge import judge

    verdict = judge(videos, captions)
    row: dict = {"videos": len(captions)}
    for key in ATTRIBUTES:
        row[key] = verdict[key]
        row[f"{key}_ci"] = bootstrap_ci([r[f"{key}_ok"] for r in verdict["per_video"]])
    with torch.no_grad():
        for name, model in rewards.items():
            row[name] = float(torch.cat([model(v, c) for v, c in zip(videos.split(64), _split(captions, 64),
                                                                      strict=True)]).mean())
    return row


def _split(items: list, n: int) -> list[list]:
    return [items[i : i + n] for i in range(0, len(items), n)]


@torch.no_grad()
def sample_batched(parts, prompts: list[str], seeds: list[int], *, mode: str, steps: int, guidance: float,
                   frames: int, height: int, width: int, batch_size: int = 48) -> tuple[torch.Tensor, float]:
    """Sample ``prompts[i]`` with generator seed ``seeds[i]``, ``batch_size`` videos at a time: (videos, seconds)."""
    from ..sampling import sample_video

    videos, seconds = [], 0.0
    for i in range(0, len(prompts), batch_size):
        t0 = time.perf_counter()
        out = sample_video(parts, prompts[i : i + batch_size], steps=steps, guidance=guidance, mode=mode,
                           frames=frames, height=height, width=width, seed=seeds[i : i + batch_size])
        seconds += time.perf_counter() - t0
        videos.append(out.videos)
    return torch.cat(videos), seconds


@torch.no_grad()
def generate(variant: Variant, prompts: list[str], seeds: list[int], batch_size: int = 48) -> tuple[torch.Tensor, list[str], float]:
    """Sample every prompt with every seed: (videos, captions, seconds per video)."""
    from ..formats import load_merged_student
    from ..teachers import load_teacher

    parts = load_teacher(variant.teacher)
    if variant.student:
        load_merged_student(variant.student, parts)
    shape = parts.native_video()
    # video (prompt k, seed s) uses generator seed s * 1000 + k
    jobs = [(p, s * 1000 + k) for s in seeds for k, p in enumerate(prompts)]
    videos, seconds = sample_batched(parts, [p for p, _ in jobs], [g for _, g in jobs], mode=variant.mode,
                                     steps=variant.steps, guidance=variant.guidance, frames=shape["frames"],
                                     height=shape["height"], width=shape["width"], batch_size=batch_size)
    return videos, [p for p, _ in jobs], seconds / len(jobs)


def evaluate(variant: Variant, prompts: list[str], seeds: list[int], rewards: dict | None = None,
             batch_size: int = 48) -> tuple[dict, torch.Tensor]:
    """One table row for ``variant`` (and its videos, for pictures)."""
    rewards = rewards or tiny_rewards()
    videos, captions, spv = generate(variant, prompts, seeds, batch_size)
    row = {"label": variant.label, "steps": variant.steps, "guidance": variant.guidance,
           **score_videos(videos, captions, rewards), "seconds_per_video": spv}
    return row, videos


def ground_truth_row(prompts: list[str], seeds: list[int], rewards: dict | None = None) -> tuple[dict, torch.Tensor]:
    """The same table row for the world's own clips (an upper bound for the judge and the rewards)."""
    from .world import clips_for_captions

    rewards = rewards or tiny_rewards()
    captions = [p for s in seeds for p in prompts]
    videos = torch.cat([clips_for_captions(prompts, seed=s) for s in seeds])
    row = {"label": "ground truth (data)", "steps": 0, "guidance": 0.0, **score_videos(videos, captions, rewards),
           "seconds_per_video": 0.0}
    return row, videos


def markdown_table(rows: list[dict]) -> str:
    head = ("| generator | steps | colour | shape | motion | all three | tiny-image | tiny-video | s/video |\n"
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head]

    def cell(r, k):
        lo, hi = r[f"{k}_ci"]
        return f"{r[k]:.2f} [{lo:.2f}, {hi:.2f}]"

    for r in rows:
        lines.append(f"| {r['label']} | {r['steps']} | " + " | ".join(cell(r, k) for k in ATTRIBUTES)
                     + f" | {r['tiny-image']:.3f} | {r['tiny-video']:.3f} | {r['seconds_per_video']:.3f} |")
    return "\n".join(lines)


def frames_picture(rows: list[tuple[str, torch.Tensor]], path: Path, videos_per_row: int = 3, scale: int = 3) -> Path:
    """A PNG grid: one row per generator (label, videos), ``videos_per_row`` videos side by side, every frame."""
    import torch.nn.functional as F
    from PIL import Image

    from ..safeio import atomic_path

    strips = []
    for _label, videos in rows:
        v = videos[:videos_per_row]  # (n, T, 3, H, W)
        pad = F.pad(v, (1, 1, 1, 1), value=1.0)  # white frame borders
        strip = torch.cat([torch.cat(list(clip), dim=-1) for clip in pad], dim=-1)  # (3, H+2, n*T*(W+2))
        strips.append(F.pad(strip, (0, 0, 2, 2), value=1.0))
    grid = torch.cat(strips, dim=-2)
    grid = F.interpolate(grid[None], scale_factor=scale, mode="nearest")[0]
    pixels = (grid.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="PNG")
    return path


def write_rows(rows: list[dict], path: Path) -> None:
    import json

    from ..safeio import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(rows, indent=2) + "\n")
