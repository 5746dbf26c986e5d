"""A distillation step with the VLM video reward (VideoReward) against one with ViCLIP, at mid size, side by side.

Both runs are t2vturbo's own step (bench/distill_steps.py ``our_step``: Distiller.training_step + backward + AdamW)
on the same mid-size ModelScope-architecture teacher (bench/device_report.py ``--size mid``: UNet 128/256/512,
LoRA rank 16, 8 x 64 x 64 clips, float32) with ONE video reward each, random weights (no downloads):

- ``viclip``: the mid report's ViCLIP (a ViT-B/32-size ViCLIP: 8 strided frames, centre 224 x 224 crop, 49 patches
  per frame; 12-layer text tower), float32 weights;
- ``videoreward``: VideoReward's architecture (t2vturbo/rewards/videoreward.py) scaled to mid size: Qwen2-VL with
  a ViT-B-size vision tower (12 blocks, 768 wide) and a 12-layer 768-wide decoder (12 heads, 2 KV heads), 239 M
  parameters, at the release's input: 4 frames (round(linspace) at 2 fps), each resized to at least 100352
  pixels (64 x 64 -> 336 x 336: 288 vision tokens per video), the full scoring prompt (~900 tokens with the tiny
  BPE tokenizer; the text after the TA token is not run), bfloat16 weights (as trained, ``rewards[].dtype``),
  per-layer gradient checkpointing (its default);
- ``videoreward-fp32``: the same in float32 weights.

The recipe's defaults hold for all: ``train.reward_checkpointing`` (decoder and reward rerun in the backward).
Each run is a fresh subprocess (peaks do not mix): peak RSS above the process after its imports, from after setup
(VmHWM reset), and the median seconds of the timed steps; the ratio column is against ``viclip``.

``--probe`` then prints what each reward cannot see, measured from input gradients and caption swaps on random
models of each architecture (blindness by construction, not a learned property; docs/vlm-rewards.md).

    python bench/vlm_reward.py --probe              # this 2-core CPU: ~10 min (1 thread)
    python bench/vlm_reward.py --probe --variants viclip --steps 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from device_report import SIZES, VIDEO_BETA, build_model, build_rewards  # noqa: E402
from distill_steps import bench_recipe, our_step  # noqa: E402
from measure import Meter, current_rss_mb, print_result, random_clips, run_child, timed_steps  # noqa: E402
from midsize import count_params, load_average  # noqa: E402

#: VideoReward's architecture at mid size (beside the mid report's ViT-B/32-size ViCLIP)
MID_VIDEOREWARD = dict(vision_depth=12, vision_width=768, vision_heads=12, vision_mlp_ratio=4, hidden_size=768,
                       layers=12, heads=12, kv_heads=2, intermediate_size=4480, mrope_section=(8, 12, 12))
VARIANTS = {"viclip": ("viclip", "float32"), "videoreward": ("videoreward", "bfloat16"),
            "videoreward-fp32": ("videoreward", "float32")}


def build_videoreward(dtype: torch.dtype, arch: dict = MID_VIDEOREWARD, **options):
    """VideoReward of ``arch`` (random weights, seed 0) at the release's pixel range and frame rule, frozen."""
    from t2vturbo.rewards.videoreward import VIDEO_MIN_PIXELS, VIDEOREWARD_MAX_PIXELS, build_tiny_videoreward

    model = build_tiny_videoreward(seed=0, min_pixels=VIDEO_MIN_PIXELS, max_pixels=VIDEOREWARD_MAX_PIXELS,
                                   **arch, **options)
    model.requires_grad_(False).eval().to(dtype=dtype)
    model.rebuild_buffers()
    model.rm_head.float()
    model.enable_gradient_checkpointing()
    return model


def child(args) -> None:
    import accelerate  # noqa: F401 - imported before the baseline in every variant
    import peft  # noqa: F401
    import transformers.models.qwen2_vl.modeling_qwen2_vl  # noqa: F401

    import t2vturbo.distill  # noqa: F401
    from t2vturbo.config import RewardConfig

    name, dtype = VARIANTS[args.variant]
    if args.threads:
        torch.set_num_threads(args.threads)
    meter = Meter(torch.device("cpu"))
    size = SIZES["mid"]
    if name == "viclip":
        reward = dict(build_rewards("mid", "cpu", getattr(torch, dtype)))["viclip"]
        rc = RewardConfig(name="viclip", weight=VIDEO_BETA, dtype=dtype)
    else:
        reward = build_videoreward(getattr(torch, dtype))
        rc = RewardConfig(name="videoreward", weight=1.0, dtype=dtype)
    recipe = bench_recipe("bench", "cpu", "float32", size["video"], size["rank"], 0.1, threads=args.threads)
    recipe.rewards = [rc]
    d, step = our_step(recipe, tempfile.mkdtemp(prefix="t2vturbo-vlm-"), lambda: build_model("mid"),
                       {rc.name: reward})
    setup_mb = current_rss_mb() - meter.base
    meter.reset_peak()
    frames, height, width = size["video"]
    captions = [[f"a red circle moving right {i}"] for i in range(args.warmup + args.steps)]
    timed = timed_steps(step, random_clips(captions, frames, height, width), args.warmup, meter.sync)
    print_result({"variant": args.variant, "s_per_step": statistics.median(timed["seconds"]),
                  "cpu_s": statistics.median(timed["cpu_seconds"]), "peak_mb": meter.peak_mb(),
                  "setup_mb": setup_mb, "reward_params": count_params(reward),
                  "reward_mb": sum(p.numel() * p.element_size() for p in reward.parameters()) / 2**20,
                  "threads": torch.get_num_threads(), "losses": timed["losses"]})


# ------------------------------------------------------------------------------------------------ the probe


def probe() -> list[tuple[str, str, str]]:
    """(what, viclip, videoreward) rows: frames and pixels that get no gradient, caption dependence."""
    from t2vturbo.rewards import reward_frame_indices
    from t2vturbo.rewards.viclip import ViCLIP, ViCLIPConfig
    from t2vturbo.rewards.videoreward import TINY_QWEN_VL

    torch.manual_seed(0)
    viclip = ViCLIP(ViCLIPConfig(vision_width=64, vision_layers=2, vision_heads=2, text_width=64, text_layers=2,
                                 text_heads=2, embed_dim=32))
    for n, p in viclip.named_parameters():  # the module leaves its projections / embeddings at zero
        if n.endswith(("proj", "projection", "embedding")):
            torch.nn.init.normal_(p, std=p.shape[-1] ** -0.5)
    viclip.requires_grad_(False).eval()
    vr = build_videoreward(torch.float32, TINY_QWEN_VL)
    rows = []
    total, h, w = 16, 320, 512
    clip = torch.rand(1, total, 3, h, w, generator=torch.Generator().manual_seed(0))
    caps = ["a corgi running on the beach at sunset"]
    seen = {}
    for name, model in (("viclip", viclip), ("videoreward", vr)):
        idx = reward_frame_indices(total, model)
        x = clip.clone().requires_grad_(True)
        model(x[:, idx], caps).sum().backward()
        g = x.grad[0].abs().sum(1)  # (T, H, W)
        frames = (g.flatten(1).sum(1) > 0).nonzero().flatten().tolist()
        cols = (g.sum((0, 1)) > 0).float().mean().item()
        rows_seen = (g.sum((0, 2)) > 0).float().mean().item()
        seen[name] = (frames, cols, rows_seen)
    rows.append(("frames of a 16-frame clip with gradient", str(seen["viclip"][0]), str(seen["videoreward"][0])))
    rows.append(("share of a 320x512 frame's columns / rows seen",
                 f"{seen['viclip'][1]:.2f} / {seen['viclip'][2]:.2f}",
                 f"{seen['videoreward'][1]:.2f} / {seen['videoreward'][2]:.2f}"))
    with torch.no_grad():
        x = clip[:, reward_frame_indices(total, vr)]
        a = vr.scores(x, caps)
        b = vr.scores(x, ["a bowl of soup on a wooden table"])
        x = clip[:, reward_frame_indices(total, viclip)]
        vi, vj = viclip(x, caps), viclip(x, ["a bowl of soup on a wooden table"])
    d = (a - b).abs()[0]
    rows.append(("|score change| when the caption is swapped",
                 f"{float((vi - vj).abs()):.2e}", f"VQ {d[0]:.1e}, MQ {d[1]:.1e}, TA {d[2]:.1e}"))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default="viclip,videoreward,videoreward-fp32",
                    help=f"comma-separated, the first is the ratio's base; of {', '.join(VARIANTS)}")
    ap.add_argument("--steps", type=int, default=2, help="timed training steps per variant")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (0: torch's default); 1 keeps timings stable on a shared, loaded CPU")
    ap.add_argument("--probe", action="store_true", help="also print what each reward is blind to")
    ap.add_argument("--variant", choices=list(VARIANTS), help=argparse.SUPPRESS)  # internal: one variant here
    args = ap.parse_args()
    if args.variant:
        child(args)
        return
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        sys.exit(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    argv = [a for a in sys.argv[1:] if a != "--probe"]
    results = {}
    for v in variants:
        result, proc = run_child([sys.executable, str(Path(__file__).resolve()), *argv, "--variant", v])
        if result is None:
            sys.exit(f"{v} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        results[v] = result
    base = results[variants[0]]
    f, h, w = SIZES["mid"]["video"]
    print(f"mid-size teacher (UNet 128/256/512, LoRA rank {SIZES['mid']['rank']}), batch 1 x {f} frames {h}x{w}, "
          f"float32, CPU, torch threads {base['threads']}; {args.steps} timed steps after {args.warmup} warm-up; "
          f"load average {load_average()}")
    print(f"{'':34s}" + "".join(f"{v:>18s}" for v in variants))
    rows = [("reward parameters (M)", lambda r: r["reward_params"] / 1e6),
            ("reward weights (MiB)", lambda r: r["reward_mb"]),
            ("peak RSS of the steps (MiB)", lambda r: r["peak_mb"]),
            ("seconds / training step (median)", lambda r: r["s_per_step"]),
            ("process CPU s / step (median)", lambda r: r["cpu_s"])]
    for label, get in rows:
        cells = []
        for v in variants:
            value, ratio = get(results[v]), get(results[v]) / get(base)
            cells.append(f"{value:10.1f}" + (f" ({ratio:4.1f}x)" if v != variants[0] else " " * 7))
        print(f"{label:34s}" + "".join(f"{c:>18s}" for c in cells))
    if args.probe:
        print("\nwhat each reward cannot see (random models of each architecture; input gradients):")
        print(f"{'':48s}  {'viclip':30s}  {'videoreward':30s}")
        for what, a, b in probe():
            print(f"{what:48s}  {a:30s}  {b:30s}")


if __name__ == "__main__":
    main()
