"""Which caption words does a tiny teacher use, and at which noise levels?

For held-out clips noised to timestep t, compare the teacher's x0 error with the true caption against the same
caption with one attribute swapped (colour, shape or direction) and against the empty caption. A word the model
uses makes the swapped error larger than the true one; equal errors mean the word is ignored at that t.
This is how we found that the shipped teacher ignores the direction word at every noise level (its objects move,
but in a direction its noise picks).

  python scripts/probe_tiny_conditioning.py [--teacher tiny|FOLDER] [--clips 32] [--trail ...] [--travel LO:HI]
"""

from __future__ import annotations

import argparse

import torch

from t2vturbo.teachers import encode_pixels, encode_prompts, load_teacher
from t2vturbo.tiny.teacher import COLOURS, DIRECTIONS, SHAPES
from t2vturbo.tiny.world import caption, parse_caption, random_clips


def swapped(text: str, what: str) -> str:
    c, s, d = parse_caption(text)
    if what == "colour":
        c = COLOURS[(COLOURS.index(c) + 1) % len(COLOURS)]
    elif what == "shape":
        s = SHAPES[(SHAPES.index(s) + 1) % len(SHAPES)]
    elif what == "direction":
        d = DIRECTIONS[(DIRECTIONS.index(d) + 1) % len(DIRECTIONS)]
    return caption(c, s, d)


@torch.no_grad()
def probe(teacher: str, n: int, seed: int, timesteps: list[int]) -> list[dict]:
    parts = load_teacher(teacher)
    clips, caps = random_clips(n, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    x0 = encode_pixels(parts, clips, generator=gen)
    variants = {"true": caps, **{f"{w}-swapped": [swapped(c, w) for c in caps] for w in ("colour", "shape", "direction")},
                "empty": [""] * n}
    embeds = {k: encode_prompts(parts, v) for k, v in variants.items()}
    rows = []
    for t in timesteps:
        a = parts.alphas_cumprod[t]
        tt = torch.full((n,), t)
        xt = parts.schedule.add_noise(x0, torch.randn(x0.shape, generator=gen), tt)
        row = {"t": t, "snr": float(a / (1 - a))}
        for k, e in embeds.items():
            row[k] = float(((parts.denoise(xt, tt, e)[0] - x0) ** 2).mean())
        rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default="tiny")
    ap.add_argument("--clips", type=int, default=32)
    ap.add_argument("--seed", type=int, default=4242)
    ap.add_argument("--timesteps", type=int, nargs="+", default=[50, 200, 400, 600, 800, 950, 999])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--trail", default="", help="the world's motion trail, as the teacher was trained (world.TRAIL)")
    ap.add_argument("--travel", default="", help="the world's travel range LO:HI, as trained (world.TRAVEL)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from t2vturbo.tiny import world

    world.TRAIL = tuple(tuple(float(x) for x in v.split(":")) for v in args.trail.split(",") if v)
    world.TRAVEL = tuple(float(x) for x in args.travel.split(":")) if args.travel else None
    rows = probe(args.teacher, args.clips, args.seed, args.timesteps)
    keys = [k for k in rows[0] if k not in ("t", "snr")]
    print("x0 mean squared error by caption (lower = better); a used word: swapped > true")
    print(f"{'t':>4} {'snr':>8} " + " ".join(f"{k:>17}" for k in keys))
    for r in rows:
        print(f"{r['t']:>4} {r['snr']:>8.4f} " + " ".join(f"{r[k]:>17.4f}" for k in keys))


if __name__ == "__main__":
    main()
