"""Reproduce the tiny-world table (the paper's Table 2 at toy scale): the teacher (50-step and 4-step DDIM + CFG)
against 4-step students distilled with no reward (plain consistency distillation), the image reward only, the
video reward only, and both (mixed: exactly ``recipes/tiny.yaml``, the README's main job), plus the mixed student
at 1, 2 and 8 steps. Every row is 48 captions x 4 seeds = 192 videos, with 95% bootstrap confidence intervals.

    python scripts/eval_tiny.py --train --out runs/eval   # distil the 4 students (~4 x 8 min), then evaluate
    python scripts/eval_tiny.py --out runs/eval           # evaluate students already in runs/eval/<variant>

Prints a markdown table, writes it (plus JSON) into --out, and draws --picture (rows: data, teacher 50 steps,
plain student, mixed student).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: reward overrides of recipes/tiny.yaml per variant (None: the recipe's own rewards, i.e. the main job)
VARIANTS = {
    "none": "[]",
    "image": "[{name: tiny-image, weight: 1.0, frames: 6}]",
    "video": "[{name: tiny-video, weight: 1.0}]",
    "mixed": None,
}
NAMES = {"none": "student, no reward (plain CD)", "image": "student, image reward only",
         "video": "student, video reward only", "mixed": "student, mixed reward (T2V-Turbo)"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/eval"))
    ap.add_argument("--train", action="store_true", help="distil the students first (recipes/tiny.yaml)")
    ap.add_argument("--variants", default="none,image,video,mixed")
    ap.add_argument("--prompts", type=int, default=48, help="captions from the 48 of the world")
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--teacher-steps", type=int, default=50)
    ap.add_argument("--teacher-guidance", type=float, default=None, help="default: the teacher's stored guidance")
    ap.add_argument("--student-guidance", type=float, default=None, help="default: the recipe's sample.guidance")
    ap.add_argument("--extra-steps", default="1,2,8", help="the mixed student at these step counts too")
    ap.add_argument("--main-run", type=Path, default=None,
                    help="a finished `t2vturbo distill recipes/tiny.yaml` run folder: its student is the mixed row "
                         "(no retraining; it is the same recipe)")
    ap.add_argument("--skip-teacher", action="store_true", help="reuse the teacher rows already in --out/table.json")
    ap.add_argument("--picture", type=Path, default=REPO / "docs" / "tiny-samples.png")
    ap.add_argument("--teacher", default="tiny", help="base model of every row (default: the shipped tiny teacher)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("overrides", nargs="*", help="recipe overrides for --train, e.g. train.max_steps=100")
    args = ap.parse_args()

    import json

    import torch

    from t2vturbo.config import load_recipe
    from t2vturbo.distill import run_distill
    from t2vturbo.tiny.evaluate import (
        Variant,
        evaluate,
        frames_picture,
        ground_truth_row,
        markdown_table,
        prompt_set,
        tiny_rewards,
        write_rows,
    )
    from t2vturbo.tiny.teacher import TEACHER_GUIDANCE

    if args.threads:
        torch.set_num_threads(args.threads)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    recipe_path = REPO / "recipes" / "tiny.yaml"
    if args.main_run is not None:
        if not (args.main_run / "student").is_dir():
            raise SystemExit(f"--main-run {args.main_run} has no student/ folder")
        (args.out / "mixed").mkdir(parents=True, exist_ok=True)
        link = args.out / "mixed" / "student"
        if not link.exists():
            link.symlink_to((args.main_run / "student").resolve(), target_is_directory=True)
    if args.train:
        for v in variants:
            if v == "mixed" and args.main_run is not None:
                continue
            t0 = time.perf_counter()
            extra = [] if VARIANTS[v] is None else [f"rewards={VARIANTS[v]}"]
            r = load_recipe(recipe_path, [*extra, "sample.prompts=[]", f"model.teacher={args.teacher}", *args.overrides])
            if args.threads:
                r.train.num_threads = args.threads
            run_distill(r, args.out / v, progress=False, log=lambda m: None)
            print(f"trained {v} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    recipe = load_recipe(recipe_path)
    s_guidance = args.student_guidance or recipe.sample.guidance
    t_guidance = args.teacher_guidance or TEACHER_GUIDANCE
    prompts, seeds = prompt_set(args.prompts), list(range(args.seeds))
    rewards = tiny_rewards()
    cached = {}
    if args.skip_teacher and (args.out / "table.json").is_file():
        cached = {r["label"]: r for r in json.loads((args.out / "table.json").read_text())}
    gt, gt_videos = ground_truth_row(prompts, seeds, rewards)
    rows, pictures = [gt], {"data": gt_videos}
    jobs = [("teacher50", Variant(f"teacher DDIM {args.teacher_steps} steps + CFG {t_guidance:g}", "teacher",
                                  args.teacher_steps, t_guidance)),
            ("teacher4", Variant(f"teacher DDIM 4 steps + CFG {t_guidance:g}", "teacher", 4, t_guidance))]
    for v in variants:
        folder = args.out / v / "student"
        if not folder.is_dir():
            print(f"skipping {v}: no student at {folder} (run with --train)", file=sys.stderr)
            continue
        jobs.append((v, Variant(NAMES[v], "student", 4, s_guidance, str(folder))))
    if "mixed" in variants and (args.out / "mixed" / "student").is_dir():
        for n in [int(x) for x in args.extra_steps.split(",") if x.strip()]:
            jobs.append((f"mixed{n}", Variant(f"{NAMES['mixed']}, {n} step{'s' if n > 1 else ''}", "student", n,
                                              s_guidance, str(args.out / "mixed" / "student"))))
    for _key, var in jobs:
        var.teacher = args.teacher
    for key, var in jobs:
        if var.label in cached and key.startswith("teacher"):
            rows.append(cached[var.label])
            continue
        t0 = time.perf_counter()
        row, videos = evaluate(var, prompts, seeds, rewards)
        rows.append(row)
        pictures[key] = videos
        print(f"evaluated {var.label} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    table = markdown_table(rows)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "table.md").write_text(table + "\n")
    write_rows(rows, args.out / "table.json")
    picture_rows = [(k, pictures[k]) for k in ("data", "teacher50", "none", "mixed") if k in pictures]
    if args.picture and len(picture_rows) == 4:
        # the same three captions (one per shape, every colour and direction varied) in every row
        pick = [i for i in (0, 17, 46) if i < len(prompts)] if len(prompts) == 48 else list(range(min(3, len(prompts))))
        frames_picture([(k, v[pick]) for k, v in picture_rows], args.picture)
        print(f"wrote {args.picture}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
