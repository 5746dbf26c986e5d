"""Peak memory and seconds per distillation step: t2vturbo's Distiller against the reference implementation's layout.

Both variants train the same student (peft LoRA + guidance projection) of the same mid-size ModelScope-architecture
model (random weights, fixed seed; bench/midsize.py) on the same random clips, with the same maths (docs/method.md):

- ours: ``t2vturbo.distill.Distiller.training_step`` + backward + AdamW step. ONE UNet serves as teacher (adapters
  off), target and student; the teacher's cond + uncond pass is one batched forward, teacher and target run under
  no_grad BEFORE the student's forward, so their activations are gone when the student's are kept for backward.
- reference: the reference implementation's layout, emulated: a separate full teacher UNet (deepcopy) beside
  the student UNet that also gives the target; the student's forward with grad runs FIRST, then the teacher's
  cond and uncond passes as two calls and the target, while the student's activations are held.

Both steps are bench/distill_steps.py's, the ones bench/device_report.py times too.

No rewards here (bench/device_report.py measures the step with both rewards, and with the recipe's
`train.gradient_checkpointing`, which checkpoints the UNet's down / mid / up blocks).

Each variant runs in a fresh subprocess so peaks do not mix: peak RSS above the process after its imports
(VmHWM) on CPU, torch.cuda.max_memory_allocated on CUDA.

    python bench/distill_memory.py                          # CPU defaults (~1-2 min, 1 thread)
    python bench/distill_memory.py --device cuda --dtype bfloat16 --frames 16 --height 256 --width 256 --threads 0
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from distill_steps import ReferenceStep, bench_recipe, our_step
from measure import Meter, current_rss_mb, peak_rss_mb, print_result, random_clips, run_child, timed_steps
from midsize import build_midsize_teacher, count_params, load_average

VARIANTS = ("ours", "reference")


def make_recipe(args):
    return bench_recipe("midsize", args.device, args.dtype, (args.frames, args.height, args.width), args.rank,
                        args.dropout, batch_size=args.batch_size, threads=args.threads)


def midsize_teacher(args):
    return build_midsize_teacher(seed=0, width=args.unet_width, layers=args.layers)


def clips(args):
    captions = [[f"a red circle moving right {i} {j}" for j in range(args.batch_size)]
                for i in range(args.warmup + args.steps)]
    return random_clips(captions, args.frames, args.height, args.width)


def run_ours(args, sync) -> dict:
    """The product's own training step, run through Distiller (the mid-size model given as its teacher loader)."""
    with tempfile.TemporaryDirectory() as out:
        d, step = our_step(make_recipe(args), out, lambda: midsize_teacher(args))
        after_setup = current_rss_mb()
        return {**timed_steps(step, clips(args), args.warmup, sync), "after_setup_rss_mb": after_setup,
                "unet_params": count_params(d.network)}


def run_reference(args, sync) -> dict:
    """The reference layout (bench/distill_steps.py): a second full UNet as teacher, student forward first,
    cond/uncond as two calls."""
    if args.threads:
        torch.set_num_threads(args.threads)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    step = ReferenceStep(make_recipe(args), midsize_teacher(args).to(device=device, dtype=dtype))
    after_setup = current_rss_mb()
    return {**timed_steps(step, clips(args), args.warmup, sync), "after_setup_rss_mb": after_setup,
            "unet_params": count_params(step.teacher_copy)}


def child(args) -> None:
    # Import everything either variant needs before the baseline, so that both count the same.
    import accelerate  # noqa: F401
    import diffusers  # noqa: F401
    import peft  # noqa: F401
    import transformers  # noqa: F401

    import t2vturbo.distill  # noqa: F401

    meter = Meter(torch.device(args.device))
    result = (run_ours if args.variant == "ours" else run_reference)(args, meter.sync)
    result.update(variant=args.variant, base_rss_mb=meter.base, peak_rss_mb=peak_rss_mb(),
                  threads=torch.get_num_threads())
    if meter.cuda:
        result["cuda_peak_mb"] = meter.peak_mb()
    print_result(result)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                    help="frozen base weights' dtype; bfloat16/float16 also turn on autocast (CUDA)")
    ap.add_argument("--unet-width", type=int, default=128, help="UNet block widths are (w, 2w, 4w)")
    ap.add_argument("--layers", type=int, default=2, help="UNet layers per block")
    ap.add_argument("--rank", type=int, default=32, help="student LoRA rank")
    ap.add_argument("--dropout", type=float, default=0.1, help="LoRA dropout")
    ap.add_argument("--steps", type=int, default=3, help="timed training steps per variant")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--repeats", type=int, default=1, help="fresh subprocesses per variant, interleaved")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (0: torch's default); 1 keeps timings stable on a shared, loaded CPU")
    ap.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # internal: run one variant here
    args = ap.parse_args()
    if args.variant:
        child(args)
        return

    results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    argv = list(sys.argv[1:])
    for _ in range(args.repeats):
        for variant in VARIANTS:
            result, proc = run_child([sys.executable, str(Path(__file__).resolve()), *argv, "--variant", variant])
            if result is None:
                sys.exit(f"{variant} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
            results[variant].append(result)

    def summary(runs: list[dict]) -> dict:
        step_s = min(statistics.median(r["seconds"]) for r in runs)
        cpu_s = min(statistics.median(r["cpu_seconds"]) for r in runs)
        peak = min(r["peak_rss_mb"] - r["base_rss_mb"] for r in runs)
        setup = min(r["after_setup_rss_mb"] - r["base_rss_mb"] for r in runs)
        out = {"step_s": step_s, "cpu_s": cpu_s, "peak": peak, "setup": setup, "unet_params": runs[0]["unet_params"],
               "threads": runs[0]["threads"]}
        if "cuda_peak_mb" in runs[0]:
            out["cuda"] = min(r["cuda_peak_mb"] for r in runs)
        return out

    ours, ref = summary(results["ours"]), summary(results["reference"])
    print(f"model: mid-size ModelScope architecture, random weights; UNet {ref['unet_params'] / 1e6:.1f}M params "
          f"({4 * ref['unet_params'] / 2**20:.0f} MiB in fp32; widths {args.unet_width}/{2 * args.unet_width}/"
          f"{4 * args.unet_width}, {args.layers} layers), LoRA rank {args.rank}, dropout {args.dropout}")
    print(f"clips: batch {args.batch_size} x {args.frames} frames {args.height}x{args.width}; device {args.device}, "
          f"{args.dtype}, torch threads {ours['threads']}; {args.steps} timed steps after {args.warmup} warm-up, "
          f"{args.repeats} fresh process(es) per variant; load average {load_average()}")
    rows = [("peak RSS above imports (MiB)", "peak"), ("RSS after setup (MiB)", "setup")]
    if "cuda" in ours:
        rows.insert(0, ("CUDA max_memory_allocated (MiB)", "cuda"))
    rows.append(("seconds / training step (median)", "step_s"))
    if not args.device.startswith("cuda"):  # CPU time: less sensitive to other processes on a shared machine
        rows.append(("process CPU s / step (median)", "cpu_s"))
    print(f"{'':34s} {'ours':>10s} {'reference':>10s} {'ours/ref':>9s}")
    for label, key in rows:
        print(f"{label:34s} {ours[key]:10.2f} {ref[key]:10.2f} {ours[key] / ref[key]:8.2f}x")
    mem_key = "cuda" if "cuda" in ours else "peak"
    print(f"peak memory ratio {ours[mem_key] / ref[mem_key]:.2f} (target <= 0.7), "
          f"step time ratio {ours['step_s'] / ref['step_s']:.2f} (target <= 0.9)")


if __name__ == "__main__":
    main()
