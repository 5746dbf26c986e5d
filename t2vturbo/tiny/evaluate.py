"""Evaluate generators on the tiny world: judge accuracies, both tiny rewards, seconds per video.

Used by ``scripts/eval_tiny.py`` to reproduce the README table (paper Table 2 at toy scale).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .world import all_captions


@dataclass
class Variant:
    """A row of the table: the teacher (DDIM + CFG) or a student folder, sampled with ``steps``."""

    label: str
    mode: str  # "teacher" or "student"
    steps: int
    guidance: float
    student: str | None = None


def prompt_set(n: int) -> list[str]:
    """``n`` captions spread evenly over the 48 of the world (every colour, shape and direction appears)."""
    caps = all_captions()
    if n >= len(caps):
        return caps
    stride = len(caps) / n
    return [caps[int(i * stride)] for i in range(n)]


@torch.no_grad()
def evaluate(variant: Variant, prompts: list[str], seeds: list[int], batch_size: int = 8) -> dict:
    """Sample every prompt with every seed and score the videos."""
    from ..models import load_teacher
    from ..official_lora import load_any_student
    from ..rewards import load_reward
    from ..sampling import sample_video
    from .judge import judge
    from .teacher import FRAMES, HEIGHT, WIDTH

    parts = load_teacher("tiny")
    if variant.student:
        load_any_student(variant.student, parts)
    rewards = {name: load_reward(name) for name in ("tiny-image", "tiny-video")}
    jobs = [(p, s) for s in seeds for p in prompts]
    videos, seconds = [], 0.0
    for i in range(0, len(jobs), batch_size):
        chunk = jobs[i : i + batch_size]
        t0 = time.perf_counter()
        out = sample_video(parts, [p for p, _ in chunk], steps=variant.steps, guidance=variant.guidance,
                           mode=variant.mode, frames=FRAMES, height=HEIGHT, width=WIDTH, seed=[s * 1000 + i + k
                                                                                              for k, (_, s) in enumerate(chunk)])
        seconds += time.perf_counter() - t0
        videos.append(out.videos)
    videos_t = torch.cat(videos)
    captions = [p for p, _ in jobs]
    verdict = judge(videos_t, captions)
    row = {"label": variant.label, "steps": variant.steps, "videos": len(jobs),
           "colour": verdict["colour"], "shape": verdict["shape"], "motion": verdict["motion"], "all": verdict["all"],
           "seconds_per_video": seconds / len(jobs)}
    for name, model in rewards.items():
        row[name] = float(torch.cat([model(v[None], [c]) for v, c in zip(videos_t, captions, strict=True)]).mean())
    return row


def markdown_table(rows: list[dict]) -> str:
    head = "| generator | steps | colour | shape | motion | all three | tiny-image | tiny-video | s/video |"
    sep = "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    lines = [head, sep]
    for r in rows:
        lines.append(f"| {r['label']} | {r['steps']} | {r['colour']:.0%} | {r['shape']:.0%} | {r['motion']:.0%} | "
                     f"{r['all']:.0%} | {r['tiny-image']:.3f} | {r['tiny-video']:.3f} | {r['seconds_per_video']:.2f} |")
    return "\n".join(lines)


def ground_truth_row(prompts: list[str], seeds: list[int]) -> dict:
    """The same table row for the world's own clips (an upper bound for the judge and the rewards)."""
    from ..rewards import load_reward
    from .judge import judge
    from .world import clips_for_captions

    captions = [p for s in seeds for p in prompts]
    videos = torch.cat([clips_for_captions(prompts, seed=s) for s in seeds])
    verdict = judge(videos, captions)
    row = {"label": "ground truth (data)", "steps": 0, "videos": len(captions), "seconds_per_video": 0.0,
           **{k: verdict[k] for k in ("colour", "shape", "motion", "all")}}
    for name in ("tiny-image", "tiny-video"):
        model = load_reward(name)
        row[name] = float(model(videos, captions).mean())
    return row


def write_rows(rows: list[dict], path: Path) -> None:
    import json

    from ..safeio import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(rows, indent=2) + "\n")
