"""Reproduce the tiny-world table: teacher (50-step CFG, 4-step DDIM) vs students distilled with no reward,
image reward only, video reward only, and mixed reward.

    python scripts/eval_tiny.py --train --out runs/eval    # distil the 4 students, then evaluate (CPU)
    python scripts/eval_tiny.py --out runs/eval             # evaluate students already in runs/eval/<variant>

Prints a markdown table and writes it (plus JSON) into --out.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {
    "none": "[]",
    "image": "[{name: tiny-image, weight: 1.0, frames: 6}]",
    "video": "[{name: tiny-video, weight: 1.0, frames: 8}]",
    "mixed": "[{name: tiny-image, weight: 1.0, frames: 6}, {name: tiny-video, weight: 1.0, frames: 8}]",
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/eval"))
    ap.add_argument("--train", action="store_true", help="distil the students first (recipes/tiny.yaml)")
    ap.add_argument("--variants", default="none,image,video,mixed")
    ap.add_argument("--prompts", type=int, default=24, help="captions from the 48 of the world")
    ap.add_argument("--seeds", type=int, default=1)
    ap.add_argument("--teacher-steps", type=int, default=50)
    ap.add_argument("--teacher-guidance", type=float, default=4.0)
    ap.add_argument("--student-guidance", type=float, default=None, help="default: the recipe's sample.guidance")
    ap.add_argument("--skip-teacher", action="store_true", help="reuse the teacher rows already in --out/table.json")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("overrides", nargs="*", help="recipe overrides for --train, e.g. train.max_steps=100")
    args = ap.parse_args()

    import json

    import torch

    from t2vturbo.config import load_recipe
    from t2vturbo.distill import run_distill
    from t2vturbo.tiny.evaluate import (
        Variant,
        evaluate,
        ground_truth_row,
        markdown_table,
        prompt_set,
        write_rows,
    )

    if args.threads:
        torch.set_num_threads(args.threads)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    recipe_path = REPO / "recipes" / "tiny.yaml"
    if args.train:
        for v in variants:
            t0 = time.perf_counter()
            r = load_recipe(recipe_path, [f"rewards={VARIANTS[v]}", "sample.prompts=[]", *args.overrides])
            run_distill(r, args.out / v, progress=False, log=lambda m: None)
            print(f"trained {v} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    guidance = args.student_guidance or load_recipe(recipe_path).sample.guidance
    prompts, seeds = prompt_set(args.prompts), list(range(args.seeds))
    cached = {}
    if args.skip_teacher and (args.out / "table.json").is_file():
        cached = {r["label"]: r for r in json.loads((args.out / "table.json").read_text())}
    rows = [ground_truth_row(prompts, seeds)]
    table_variants = [Variant(f"teacher DDIM {args.teacher_steps} steps + CFG", "teacher", args.teacher_steps,
                              args.teacher_guidance),
                      Variant("teacher DDIM 4 steps + CFG", "teacher", 4, args.teacher_guidance)]
    if args.skip_teacher:
        rows += [cached[v.label] for v in table_variants if v.label in cached]
        table_variants = []
    names = {"none": "student, no reward (plain CD)", "image": "student, image reward", "video": "student, video reward",
             "mixed": "student, mixed reward (T2V-Turbo)"}
    for v in variants:
        folder = args.out / v / "student"
        if not folder.is_dir():
            print(f"skipping {v}: no student at {folder} (run with --train)", file=sys.stderr)
            continue
        table_variants.append(Variant(names[v], "student", 4, guidance, str(folder)))
    for var in table_variants:
        t0 = time.perf_counter()
        rows.append(evaluate(var, prompts, seeds))
        print(f"evaluated {var.label} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    table = markdown_table(rows)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(table + "\n")
    write_rows(rows, args.out / "table.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
