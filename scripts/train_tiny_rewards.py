"""Train the tiny-world rewards ``tiny-image`` and ``tiny-video`` reproducibly from a seed.

Each step renders fresh clips (t2vturbo/tiny/world.py), degrades some of them (blur, noise: generated videos
are blurrier than the renderer) and scores them against ALL 48 captions of the world, so every wrong-colour,
wrong-shape and wrong-direction caption is a negative in every step.
  tiny-image: soft cross-entropy whose target is spread evenly over the 4 captions with the right colour and
              shape (a single frame cannot tell the direction, so the model learns to ignore it). It is made
              strict on shape, as a human-preference reward is on a half-drawn object: in a fraction of the
              clips (--mix) the object is an alpha blend of its shape and another, (1 - m) of one and m of the
              other, and the shape target is split (1 - m, m) the same way; a heavy blur (--blur-doubt) moves
              part of the shape target to the other shapes. A faint mixture of shapes (what a generator that
              averages its options draws) then scores below the crisp shape, so the reward's gradient points
              to a cleaner shape instead of accepting the blob.
  tiny-video: cross-entropy on the one true caption, from 4 strided frames at 6x6 pixels (coarse, as ViCLIP's
              view of a video is: strong on motion, weaker on shape).
Weights go to t2vturbo/tiny/weights/rewards/tiny-{image,video}.{safetensors,json}.

  python scripts/train_tiny_rewards.py --seed 0
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from t2vturbo.rewards.tiny import REWARD_DIR, TinyReward, save_tiny_reward
from t2vturbo.tiny.teacher import COLOURS, DIRECTIONS, SHAPES
from t2vturbo.tiny.world import all_captions, parse_caption, random_clips, random_params, render, render_blend


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def degrade(clips: torch.Tensor, gen: torch.Generator, factors: list[int] | None = None) -> torch.Tensor:
    """Blur (down/up-sample by 1, 2 or 4) and add noise per clip, like a generated video. ``factors``, if given,
    receives each clip's blur factor."""
    b, t, c, h, w = clips.shape
    out = []
    for i in range(b):
        x = clips[i]
        factor = [1, 1, 2, 4][int(torch.randint(4, (1,), generator=gen))]
        if factors is not None:
            factors.append(factor)
        if factor > 1:
            x = F.interpolate(F.avg_pool2d(x, factor), size=(h, w), mode="bilinear", align_corners=False)
        sigma = 0.06 * float(torch.rand(1, generator=gen))
        x = x + sigma * torch.randn(x.shape, generator=gen)
        out.append(x.clamp(0, 1))
    return torch.stack(out)


def attribute_index(captions: list[str]) -> torch.Tensor:
    """(N, 3) colour, shape, direction indices."""
    rows = []
    for c in captions:
        col, shp, d = parse_caption(c)
        rows.append((COLOURS.index(col), SHAPES.index(shp), DIRECTIONS.index(d)))
    return torch.tensor(rows)


def targets(kind: str, caps: list[str], world: list[str], shape_dist: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 48) target distribution over the world's captions. ``shape_dist`` (B, 3), image only: how much of
    each shape the clip shows (default: all of its caption's)."""
    a = attribute_index(caps)
    w = attribute_index(world)
    if kind == "video":
        match = (a[:, None] == w[None]).all(-1).float()
    elif shape_dist is None:
        match = (a[:, None, :2] == w[None, :, :2]).all(-1).float()
    else:  # right colour, any direction, weighted by the shape's share
        match = (a[:, None, 0] == w[None, :, 0]).float() * shape_dist[:, w[:, 1]]
    return match / match.sum(dim=1, keepdim=True)


def shape_mixtures(n: int, seed: int, mix: float, gen: torch.Generator) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """``n`` random clips of which a fraction ``mix`` show an alpha blend of two shapes (world.render_blend): the
    clips, their captions (of the larger share) and (n, 3) how much of each shape they show."""
    params = random_params(n, seed)
    dist = F.one_hot(params.shape, len(SHAPES)).float()
    blend = torch.rand(n, generator=gen) < mix
    if not (mix > 0 and bool(blend.any())):
        return render(params), params.captions(), dist
    other = (params.shape + torch.randint(1, len(SHAPES), (n,), generator=gen)) % len(SHAPES)
    m = 0.5 * torch.rand(n, generator=gen) * blend.float()  # the caption's shape keeps the larger share
    dist = (1 - m)[:, None] * dist + m[:, None] * F.one_hot(other, len(SHAPES)).float()
    return render_blend(params, other, m), params.captions(), dist


def blur_doubt(dist: torch.Tensor, factors: list[int], doubt: float) -> torch.Tensor:
    """Move ``doubt`` of the shape target, evenly, to the other shapes for a 4x blur (half that for 2x)."""
    d = torch.tensor([{1: 0.0, 2: 0.5, 4: 1.0}[f] for f in factors]) * doubt
    return (1 - d)[:, None] * dist + d[:, None] * (1 - dist) / (dist.shape[1] - 1)


def train(kind: str, seed: int, steps: int, batch: int, lr: float, channels: list[int], frames_per_clip: int,
          scale: float, size: int, num_frames: int, mix: float = 0.0, doubt: float = 0.0,
          symmetric: bool = False) -> TinyReward:
    torch.manual_seed(seed)
    model = TinyReward(kind, channels, num_frames=num_frames, size=size)
    world = all_captions()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed + 11)
    t0 = time.time()
    for step in range(steps):
        data_seed = 7_000_000 + 100_000 * seed + step
        dist = None
        if kind == "image" and (mix > 0 or doubt > 0):
            clips, caps, dist = shape_mixtures(batch, data_seed, mix, gen)
        else:
            clips, caps = random_clips(batch, seed=data_seed)
        factors: list[int] = []
        clips = degrade(clips, gen, factors)
        if dist is not None and doubt > 0:
            dist = blur_doubt(dist, factors, doubt)
        if kind == "image":  # frames are scored independently: a few per clip are enough
            pick = torch.randint(clips.shape[1], (frames_per_clip,), generator=gen)
            clips = clips[:, pick]
        logits = scale * model.similarity(clips, world)
        target = targets(kind, caps, world, dist)
        loss = -(target * F.log_softmax(logits, dim=-1)).sum(-1).mean()
        if symmetric:  # and caption -> clip, as CLIP's loss: a caption prefers its crisp clips to the blends
            per_frame = model.embed_video(clips) @ model.text(world).T  # (B, F, 48)
            col = scale * per_frame.flatten(0, 1).T  # (48, B F)
            col_target = target.repeat_interleave(clips.shape[1], dim=0).T  # (48, B F)
            present = col_target.sum(dim=1) > 0
            col_target = col_target[present] / col_target[present].sum(dim=1, keepdim=True)
            loss = loss - (col_target * F.log_softmax(col[present], dim=-1)).sum(-1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 25 == 0 or step == steps - 1:
            log(f"{kind} step {step}/{steps} loss {loss.item():.4f} ({time.time() - t0:.0f}s)")
    model.train_seconds = time.time() - t0
    return model.eval()


@torch.no_grad()
def evaluate(model: TinyReward, seed: int, n: int) -> dict:
    """Held-out accuracies: top-1 over the world's captions, and pairwise wins over single-attribute swaps."""
    world = all_captions()
    params = random_params(n, seed=123_456_789 + seed)
    clips, caps = render(params), params.captions()
    sim = model.similarity(clips, world)  # (n, 48)
    a = attribute_index(caps)
    w = attribute_index(world)
    true = (a[:, None] == w[None]).all(-1).float().argmax(dim=1)
    pred = w[sim.argmax(dim=1)]
    out = {
        "colour_top1": float((pred[:, 0] == a[:, 0]).float().mean()),
        "shape_top1": float((pred[:, 1] == a[:, 1]).float().mean()),
        "direction_top1": float((pred[:, 2] == a[:, 2]).float().mean()),
    }
    s_true = sim.gather(1, true[:, None])
    for k, name in enumerate(("colour", "shape", "direction")):
        others = [j for j in range(3) if j != k]
        swap = ((a[:, None, others] == w[None, :, others]).all(-1) & (a[:, None, k] != w[None, :, k]))
        wins = (s_true > sim).float()
        out[f"beats_wrong_{name}"] = float((wins * swap).sum() / swap.sum())
    # strictness on shape: the same clips with a third of another shape blended in must score lower
    mixed = render_blend(params, (params.shape + 1 + torch.arange(n) % 2) % len(SHAPES), 1 / 3)
    out["crisp_beats_mixed"] = float((model(clips, caps) > model(mixed, caps)).float().mean())
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=REWARD_DIR)
    ap.add_argument("--which", choices=["image", "video", "both"], default="both")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--image-steps", type=int, default=1500)
    ap.add_argument("--video-steps", type=int, default=800)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--scale", type=float, default=20.0, help="logit scale of the contrastive softmax")
    ap.add_argument("--image-size", type=int, default=24, help="tiny-image sees frames at this size")
    ap.add_argument("--video-size", type=int, default=6, help="tiny-video sees frames at this size (coarse)")
    ap.add_argument("--video-frames", type=int, default=4, help="tiny-video sees this many strided frames")
    ap.add_argument("--eval-clips", type=int, default=512)
    ap.add_argument("--mix", type=float, default=0.5,
                    help="tiny-image: fraction of clips whose object blends two shapes (share of the other < 0.5)")
    ap.add_argument("--symmetric", action=argparse.BooleanOptionalAction, default=True,
                    help="tiny-image: add the caption -> frame direction of the contrastive loss")
    ap.add_argument("--blur-doubt", type=float, default=0.3,
                    help="tiny-image: share of the shape target a 4x blur moves to the other shapes (2x: half)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    kinds = ["image", "video"] if args.which == "both" else [args.which]
    stats_path = args.out / "training_stats.json"
    stats = json.loads(stats_path.read_text()) if stats_path.is_file() else {}
    for kind in kinds:
        channels = [16, 32, 64]
        steps = args.image_steps if kind == "image" else args.video_steps
        model = train(kind, args.seed, steps, args.batch, args.lr, channels, frames_per_clip=2, scale=args.scale,
                      size=args.image_size if kind == "image" else args.video_size, num_frames=args.video_frames,
                      mix=args.mix if kind == "image" else 0.0, doubt=args.blur_doubt if kind == "image" else 0.0,
                      symmetric=kind == "image" and args.symmetric)
        path = save_tiny_reward(model, args.out / f"tiny-{kind}")
        acc = evaluate(model, args.seed, args.eval_clips)
        stats[f"tiny-{kind}"] = {"seconds": round(model.train_seconds, 1), "steps": steps, "batch": args.batch,
                                 "seed": args.seed, "heldout": acc}
        log(f"tiny-{kind}: wrote {path}; held-out {acc}")
    args.out.mkdir(parents=True, exist_ok=True)
    stats_path.write_text(json.dumps(stats, indent=1))


if __name__ == "__main__":
    main()
