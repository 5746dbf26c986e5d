"""What T2V-Turbo-v2's motion guidance (``distill.motion``) costs per distillation step, side by side.

Times ``Distiller.training_step`` + the optimiser update on the tiny recipe (no rewards) with and without
``distill.motion.scale``, in one process, and prints the ratio of the median step times. The guided samples
(solver index >= (1 - percentage) N) add the clip's DDIM inversion (up to N teacher calls) and one teacher
forward + backward for the temporal-attention score.

  python bench/motion_step.py [--steps 6] [--batch 4] [--threads 2]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from distill_steps import distiller_step

from t2vturbo.config import load_recipe
from t2vturbo.distill import Distiller

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "tiny.yaml"


def median_step(overrides: list[str], steps: int) -> float:
    d = Distiller(load_recipe(RECIPE, overrides), tempfile.mkdtemp(prefix="t2vturbo-motion-"), progress=False,
                  log=lambda m: None)
    d.setup()
    step = distiller_step(d)
    times = []
    for _ in range(steps + 1):  # the first step warms up
        pixels, captions = d.stream.next_batch()
        t0 = time.perf_counter()
        step(pixels, captions)
        times.append(time.perf_counter() - t0)
    return statistics.median(times[1:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--percentage", type=float, default=0.5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    base = ["sample.prompts=[]", "rewards=[]", f"train.batch_size={args.batch}"]
    plain = median_step(base, args.steps)
    motion = median_step(base + ["distill.motion.scale=0.05", f"distill.motion.percentage={args.percentage}"],
                         args.steps)
    print(f"plain {plain:.2f} s/step, motion-guided {motion:.2f} s/step: {motion / plain:.2f}x "
          f"(tiny, batch {args.batch}, N 50, percentage {args.percentage})")


if __name__ == "__main__":
    main()
