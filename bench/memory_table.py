"""The README's memory table: per-GPU memory of a distillation run for ModelScope, VideoCrafter2, Wan2.1-1.3B and
Wan2.1-14B at 1 / 8 / 64 GPUs, DDP against FSDP (and FSDP + CPU offload), from ``t2vturbo.memory_plan`` (counted
on the meta device from the published configurations; no download, no GPU).

    python bench/memory_table.py                  # the recipes as shipped
    python bench/memory_table.py --gpus 1,8       # fewer columns
"""

from __future__ import annotations

import argparse
from pathlib import Path

RECIPES = [("ModelScope", "modelscope.yaml", []), ("VideoCrafter2", "videocrafter2.yaml", ["model.teacher=videocrafter2"]),
           ("Wan2.1-1.3B", "wan2.1-t2v-1.3b.yaml", []), ("Wan2.1-14B", "wan2.1-t2v-14b.yaml", [])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpus", default="1,8,64")
    args = ap.parse_args()
    from t2vturbo.config import load_recipe
    from t2vturbo.memory_plan import count, per_rank, smallest_gpu

    root = Path(__file__).resolve().parents[1] / "recipes"
    print("| model (recipe, clip) | GPUs | DDP GiB/GPU | FSDP GiB/GPU | FSDP + offload GiB/GPU | smallest GPU (FSDP) |")
    print("|---|---|---|---|---|---|")
    for name, recipe, ov in RECIPES:
        r = load_recipe(root / recipe, ov, check=False)
        c = count(r)
        v = r.video
        for world in [int(g) for g in args.gpus.split(",")]:
            cols = {m: per_rank(c, world, m)["total"] for m in ("ddp", "fsdp", "fsdp+offload")}
            print(f"| {name} (`{recipe}`, {v.frames}x{v.height}x{v.width}) | {world} | {cols['ddp']:.1f} | "
                  f"{cols['fsdp']:.1f} | {cols['fsdp+offload']:.1f} | {smallest_gpu(cols['fsdp'])} |")


if __name__ == "__main__":
    main()
