"""The main job's own check: a run's 4-step student judged on the tiny world's captions, beside the teacher's
recorded figure.

A few seconds on a CPU: the world's 48 captions once each (generator seed k for caption k: the first 48 of the
192 videos ``scripts/eval_tiny.py`` judges a row on), sampled in one batch and read by the analytic judge
(:mod:`t2vturbo.tiny.judge`): colour, shape and direction. Written to ``<run>/check.json``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .teacher import TINY_WEIGHTS_DIR

#: the figures the project measured (teacher DDIM 50 + CFG 7.5, the main job's student), with their source
RECORDED_FILE = TINY_WEIGHTS_DIR / "recorded.json"
#: student steps of the check (the steps the student is distilled for)
STEPS = 4
#: the check's videos: every caption of the world once
VIDEOS = 48
#: videos sampled at once: 8 adds ~200 MiB to the process, 48 at once ~700 MiB (more than the whole main job's
#: training peak grows by), in the same time on a 2-core CPU
BATCH = 8


def applies(recipe) -> bool:
    """True when the recipe distils the shipped tiny teacher on the tiny world (the judge reads only that world)."""
    return recipe.data.source == "tiny-world" and recipe.model.teacher == "tiny"


def recorded(key: str = "teacher") -> dict | None:
    """A recorded row of :data:`RECORDED_FILE` (``teacher`` or ``student``); None if the file or row is absent."""
    try:
        return json.loads(RECORDED_FILE.read_text())[key]
    except (OSError, ValueError, KeyError):
        return None


def quick_check(teacher, recipe, out_dir, log=print, *, videos: int = VIDEOS, batch_size: int = BATCH) -> dict | None:
    """Judge the student that ``teacher``'s network carries on ``videos`` tiny-world captions at 4 steps.

    Args:
        teacher: the loaded tiny teacher whose network carries the trained student adapter.
        recipe: the run's recipe (its ``sample.guidance`` and ``video`` shape are used).
        out_dir: the run folder; ``check.json`` is written there (atomically).
        log: one line goes here.
        videos: how many videos (the world's captions in :func:`~t2vturbo.tiny.evaluate.prompt_set` order).

    Returns:
        The check (also in ``check.json``), or None (nothing written, nothing logged) when the recipe is not the
        shipped tiny teacher on the tiny world.
    """
    if not applies(recipe):
        return None
    from ..safeio import atomic_path
    from .evaluate import prompt_set, sample_batched
    from .judge import judge

    prompts = prompt_set(videos)
    v = recipe.video
    t0 = time.perf_counter()
    clips, _ = sample_batched(teacher, prompts, list(range(len(prompts))), mode="student", steps=STEPS,
                              guidance=recipe.sample.guidance, frames=v.frames, height=v.height, width=v.width,
                              batch_size=batch_size)
    verdict = judge(clips, prompts)
    seconds = time.perf_counter() - t0
    result = {
        "videos": len(prompts),
        "steps": STEPS,
        "guidance": recipe.sample.guidance,
        "seed": "generator seed k for caption k (scripts/eval_tiny.py's seed 0)",
        "colour": verdict["colour"],
        "shape": verdict["shape"],
        "direction": verdict["motion"],
        "all_three": verdict["all"],
        "seconds": round(seconds, 2),
        "teacher_recorded": recorded("teacher"),
    }
    out = Path(out_dir) / "check.json"
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(result, indent=1) + "\n")
    line = (f"check: {STEPS}-step student, all three attributes right in {result['all_three']:.2f} of "
            f"{result['videos']} videos (colour {result['colour']:.2f} shape {result['shape']:.2f} direction "
            f"{result['direction']:.2f}) in {seconds:.1f} s")
    ref = result["teacher_recorded"]
    if ref:
        line += f"; the {ref['steps']}-step teacher: {ref['all_three']:.2f} of {ref['videos']} (recorded)"
    log(line)
    return result


__all__ = ["RECORDED_FILE", "applies", "quick_check", "recorded"]
