"""Peak memory and seconds per distillation step: t2vturbo's Distiller against the reference implementation's layout.

Both variants train the same student (peft LoRA + guidance projection) of the same mid-size ModelScope-architecture
model (random weights, fixed seed; bench/midsize.py) on the same random clips, with the same maths (docs/method.md):

- ours: ``t2vturbo.distill.Distiller.training_step`` + backward + AdamW step. ONE UNet serves as teacher (adapters
  off), target and student; the teacher's cond + uncond pass is one batched forward, teacher and target run under
  no_grad BEFORE the student's forward, so their activations are gone when the student's are kept for backward.
- reference: the reference implementation's layout, emulated here: a separate full teacher UNet (deepcopy) beside
  the student UNet that also gives the target; the student's forward with grad runs FIRST, then the teacher's
  cond and uncond passes as two calls and the target, while the student's activations are held.

No rewards here (bench/device_report.py measures the step with both rewards, and with the recipe's
`train.gradient_checkpointing`, which checkpoints the UNet's down / mid / up blocks).

Each variant runs in a fresh subprocess so peaks do not mix: peak RSS above the process after its imports
(resource.getrusage) on CPU, torch.cuda.max_memory_allocated on CUDA.

    python bench/distill_memory.py                          # CPU defaults (~1-2 min, 1 thread)
    python bench/distill_memory.py --device cuda --dtype bfloat16 --frames 16 --height 256 --width 256 --threads 0
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from midsize import build_midsize_teacher, count_params, load_average

VARIANTS = ("ours", "reference")


def current_rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def make_recipe(args):
    from t2vturbo.config import Recipe

    recipe = Recipe()
    recipe.model.teacher = "midsize"
    recipe.model.device = args.device
    recipe.model.dtype = args.dtype
    recipe.video.frames, recipe.video.height, recipe.video.width = args.frames, args.height, args.width
    recipe.lora.rank, recipe.lora.dropout = args.rank, args.dropout
    recipe.train.batch_size = args.batch_size
    recipe.train.num_threads = args.threads
    recipe.train.mixed_precision = {"float32": "no", "bfloat16": "bf16", "float16": "fp16"}[args.dtype]
    recipe.train.checkpoint_every = 10**6
    return recipe


def midsize_parts(args, device, dtype):
    return build_midsize_teacher(seed=0, width=args.unet_width, layers=args.layers).to(device=device, dtype=dtype)


def batches(args, steps: int):
    g = torch.Generator().manual_seed(1)
    for i in range(steps):
        pixels = torch.rand(args.batch_size, args.frames, 3, args.height, args.width, generator=g)
        yield pixels, [f"a red circle moving right {i} {j}" for j in range(args.batch_size)]


def run_ours(args, sync) -> dict:
    """The product's own training step, run through Distiller (its model loader swapped for the mid-size model)."""
    import t2vturbo.distill as distill

    distill.load_teacher = lambda spec, device, dtype: midsize_parts(args, device, dtype)
    distill.make_stream = lambda *a, **k: None  # the bench feeds its own clips
    with tempfile.TemporaryDirectory() as out:
        d = distill.Distiller(make_recipe(args), out, log=lambda _: None, progress=False)
        d.setup()
        after_setup = current_rss_mb()

        def step(pixels, captions):
            loss, _ = d.training_step(pixels, captions)
            d.apply_gradients(loss)
            d.step += 1
            return loss

        return timed_steps(args, step, sync, after_setup, count_params(d.unet))


def run_reference(args, sync) -> dict:
    """The reference layout: a second full UNet as teacher, student forward first, cond/uncond as two calls."""
    from accelerate.utils import set_seed

    from t2vturbo.consistency import (
        add_noise,
        boundary_scalings,
        consistency_loss,
        ddim_step,
        guidance_embedding,
        lcm_guidance,
        predict_x0,
    )
    from t2vturbo.schedules import solver_grid
    from t2vturbo.student import LoraSettings, make_student
    from t2vturbo.teachers import call_unet, encode_pixels, encode_prompts

    recipe = make_recipe(args)
    r, dist = recipe, recipe.distill
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype)
    set_seed(r.train.seed)
    parts = midsize_parts(args, device, dtype)
    teacher = copy.deepcopy(parts.unet)  # the reference keeps a full teacher UNet beside the student's
    torch.manual_seed(r.train.seed)
    unet = make_student(parts.unet, LoraSettings(rank=r.lora.rank, dropout=r.lora.dropout),
                        dist.guidance_embed_dim)
    params = [p for p in unet.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    unet.train()
    optimizer = torch.optim.AdamW(params, lr=r.train.learning_rate, weight_decay=r.train.weight_decay,
                                  eps=r.train.adam_eps)
    alphas = parts.alphas_cumprod.to(device, torch.float32)
    solver_t = solver_grid(dist.num_train_timesteps, dist.num_ddim_timesteps).to(device)
    uncond_1 = encode_prompts(parts, [""])
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    after_setup = current_rss_mb()
    step_index = 0

    def bcast(x, like):
        return x.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)

    def step(pixels, captions):
        nonlocal step_index
        gen = torch.Generator().manual_seed(1000 + step_index)
        step_index += 1
        b = pixels.shape[0]
        with torch.no_grad():
            latents = encode_pixels(parts, pixels.to(device))
            cond = encode_prompts(parts, captions)
            uncond = uncond_1.expand(b, -1, -1)
        index = torch.randint(0, dist.num_ddim_timesteps, (b,), generator=gen).to(device)
        t_start = solver_t[index]
        t_end = (t_start - dist.skip).clamp(min=0)
        noise = torch.randn(latents.shape, generator=gen).to(device, latents.dtype)
        x_t = add_noise(latents, noise, alphas[t_start])
        w = dist.w_min + (dist.w_max - dist.w_min) * torch.rand((b,), generator=gen)
        w_emb = guidance_embedding(w, dist.guidance_embed_dim).to(device, latents.dtype)
        w_dev = w.to(device)

        # 1. Student forward with grad first: its activations stay alive through everything below.
        with autocast:
            eps_s = call_unet(unet, x_t, t_start, cond, timestep_cond=w_emb).float()
        c_skip_s, c_out_s = boundary_scalings(t_start)
        pred = bcast(c_skip_s, x_t) * x_t.float() + \
            bcast(c_out_s, x_t) * predict_x0(eps_s, x_t.float(), alphas[t_start])

        with torch.no_grad():
            # 2. Teacher (its own UNet copy): cond and uncond as two calls, LCM-form CFG, one DDIM step.
            with autocast:
                eps_c = call_unet(teacher, x_t, t_start, cond).float()
                eps_u = call_unet(teacher, x_t, t_start, uncond).float()
            a_start = alphas[t_start]
            x0_c, x0_u = predict_x0(eps_c, x_t.float(), a_start), predict_x0(eps_u, x_t.float(), a_start)
            x0_g, eps_g = lcm_guidance(x0_c, x0_u, w_dev), lcm_guidance(eps_c, eps_u, w_dev)
            x_prev = ddim_step(x0_g, eps_g, alphas[t_end]).to(latents.dtype)
            # 3. Target from the student UNet under no_grad.
            with autocast:
                eps_tgt = call_unet(unet, x_prev, t_end, cond, timestep_cond=w_emb).float()
            c_skip_e, c_out_e = boundary_scalings(t_end)
            target = bcast(c_skip_e, x_prev) * x_prev.float() + \
                bcast(c_out_e, x_prev) * predict_x0(eps_tgt, x_prev.float(), alphas[t_end])

        loss = consistency_loss(pred, target, dist.loss, dist.huber_c)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, r.train.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return timed_steps(args, step, sync, after_setup, count_params(teacher))


def timed_steps(args, step, sync, after_setup: float, unet_params: int) -> dict:
    seconds, cpu_seconds, losses = [], [], []
    for i, (pixels, captions) in enumerate(batches(args, args.warmup + args.steps)):
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        loss = step(pixels, captions)
        sync()
        if i >= args.warmup:
            seconds.append(time.perf_counter() - t0)
            cpu_seconds.append(time.process_time() - c0)
        losses.append(float(loss.detach()))
    if not all(math.isfinite(v) for v in losses):
        raise RuntimeError(f"non-finite loss in the bench: {losses}")
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "after_setup_rss_mb": after_setup, "unet_params": unet_params,
            "losses": losses}


def child(args) -> None:
    # Import everything either variant needs before the baseline, so that both count the same.
    import accelerate  # noqa: F401
    import diffusers  # noqa: F401
    import peft  # noqa: F401
    import transformers  # noqa: F401

    import t2vturbo.distill  # noqa: F401

    cuda = args.device.startswith("cuda")
    base_rss = current_rss_mb()
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    def sync():
        if cuda:
            torch.cuda.synchronize()

    result = (run_ours if args.variant == "ours" else run_reference)(args, sync)
    result.update(variant=args.variant, base_rss_mb=base_rss, peak_rss_mb=peak_rss_mb(),
                  threads=torch.get_num_threads())
    if cuda:
        result["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps(result), flush=True)


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
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
    for _ in range(args.repeats):
        for variant in VARIANTS:
            proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), *argv, "--variant", variant],
                                  capture_output=True, text=True, env=env)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not lines:
                sys.exit(f"{variant} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
            results[variant].append(json.loads(lines[-1][len("RESULT "):]))

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
