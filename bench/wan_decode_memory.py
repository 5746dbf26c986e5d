"""Memory of the reward path on Wan: decoding only the pixel frames the rewards need against decoding all frames.

Wan's VAE is causal in time, so pixel frame j needs latent frames 0 .. ceil(j / 4) and nothing after:
``WanTeacher.decode_video(latents, frames=...)`` decodes only up to the last latent frame the chosen frames need.
This builds an ``AutoencoderKLWan`` with the real 2.1 architecture (base_dim 96, z_dim 16; random weights) and
measures, side by side in one run, the bytes autograd keeps for the backward pass of a decode (what the reward's
gradient holds on any device; on CUDA also the peak allocated) for the frames a recipe's rewards pick.

    python bench/wan_decode_memory.py                              # CPU: 17 frames at 64 x 64 (~1 min)
    python bench/wan_decode_memory.py --device cuda --frames 81 --height 480 --width 832
"""

from __future__ import annotations

import argparse
import time

import torch


def saved_bytes(fn) -> tuple[int, float]:
    """Bytes of the tensors autograd saves while ``fn`` runs (each storage counted once), and seconds."""
    seen: dict[int, int] = {}

    def pack(t):
        try:
            key = t.untyped_storage().data_ptr()
            seen[key] = max(seen.get(key, 0), t.untyped_storage().nbytes())
        except RuntimeError:  # a tensor without storage (e.g. a functional wrapper)
            pass
        return t

    t0 = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    seconds = time.perf_counter() - t0
    out.float().mean().backward()
    return sum(seen.values()), seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frames", type=int, default=17)
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--pick", default="0,4,8,12", help="pixel frames a reward decodes (a recipe's image frames)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from diffusers import AutoencoderKLWan

    from t2vturbo.schedules import FlowSchedule
    from t2vturbo.teachers.wan import WanTeacher

    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                           temperal_downsample=[False, True, True]).to(args.device).eval().requires_grad_(False)
    teacher = WanTeacher(transformer=torch.nn.Linear(1, 1).to(args.device), vae=vae, text_encoder=None,
                         tokenizer=None, schedule=FlowSchedule(3.0))
    lat_frames = (args.frames - 1) // 4 + 1
    latents = torch.randn(1, 16, lat_frames, args.height // 8, args.width // 8, device=args.device,
                          requires_grad=True)
    pick = [int(x) for x in args.pick.split(",")]
    rows = []
    for name, frames in (("all frames", None), (f"frames {pick}", pick)):
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        nbytes, secs = saved_bytes(lambda frames=frames: teacher.decode_video(latents, frames=frames))
        peak = torch.cuda.max_memory_allocated() if args.device.startswith("cuda") else None
        rows.append((name, nbytes, secs, peak))
        latents.grad = None
    print(f"AutoencoderKLWan (2.1 architecture), {args.frames} frames {args.height}x{args.width} "
          f"({lat_frames} latent frames), device {args.device}")
    print("| decode | saved for backward | seconds | CUDA peak |")
    print("|---|---:|---:|---:|")
    for name, nbytes, secs, peak in rows:
        print(f"| {name} | {nbytes / 2**20:.1f} MiB | {secs:.2f} | {'-' if peak is None else f'{peak / 2**20:.0f} MiB'} |")
    full, part = rows[0][1], rows[1][1]
    print(f"ratio all / picked: {full / max(part, 1):.2f}x memory, {rows[0][2] / max(rows[1][2], 1e-9):.2f}x time")


if __name__ == "__main__":
    main()
