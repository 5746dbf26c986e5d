"""End-to-end seconds per video: the 4-step student against the 50-step CFG teacher on the same mid-size model.

Builds a mid-size ModelScope-architecture model in code (random weights, fixed seed; see bench/midsize.py),
turns its UNet into a student (peft LoRA + guidance projection, t2vturbo.student.make_student), and times
``t2vturbo.sampling.sample_video`` in both modes in one run. Hooks on the UNet, the text encoder and the VAE
decoder measure where the time goes; "loop overhead" is everything else (noise, schedule maths, copies).

    python bench/sample_speed.py                                  # CPU defaults (~2-3 min, 1 thread)
    python bench/sample_speed.py --device cuda --dtype float16 --frames 16 --height 256 --width 256 --threads 0
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
from midsize import build_midsize_teacher, count_params, load_average


class Timers:
    """Wall time spent inside the network's forward (``unet``), the text encoder's forward and ``vae.decode``
    (synced on CUDA) of a teacher."""

    def __init__(self, teacher, cuda: bool):
        self.cuda = cuda
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._start: dict[str, float] = {}
        for name, module in (("unet", teacher.network), ("text", teacher.text_encoder)):
            module.register_forward_pre_hook(lambda *_, n=name: self._begin(n))
            module.register_forward_hook(lambda *_, n=name: self._end(n))
        decode = teacher.vae.decode

        def timed_decode(*args, **kwargs):
            self._begin("vae")
            out = decode(*args, **kwargs)
            self._end("vae")
            return out

        teacher.vae.decode = timed_decode

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def _begin(self, name: str) -> None:
        self._sync()
        self._start[name] = time.perf_counter()

    def _end(self, name: str) -> None:
        self._sync()
        self.seconds[name] += time.perf_counter() - self._start.pop(name)
        self.calls[name] += 1

    def reset(self) -> None:
        self.seconds.clear()
        self.calls.clear()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=8)
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--videos", type=int, default=1, help="prompts per sample_video call (batch)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 ...")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    ap.add_argument("--unet-width", type=int, default=64, help="UNet block widths are (w, 2w, 4w)")
    ap.add_argument("--layers", type=int, default=2, help="UNet layers per block")
    ap.add_argument("--rank", type=int, default=8,
                    help="student LoRA rank (8: the paper's 32 on ModelScope's 320-wide UNet, scaled to width 64)")
    ap.add_argument("--student-steps", type=int, default=4)
    ap.add_argument("--teacher-steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=7.5)
    ap.add_argument("--repeats", type=int, default=1, help="timed teacher runs (median shown)")
    ap.add_argument("--student-repeats", type=int, default=3, help="timed student runs (median shown)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (0: torch's default); 1 keeps timings stable on a shared, loaded CPU")
    ap.add_argument("--no-merged", action="store_true", help="skip the merged-LoRA student row")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from t2vturbo.sampling import sample_video
    from t2vturbo.student import LoraSettings, make_student, merge_lora, teacher_mode

    device = torch.device(args.device)
    cuda = device.type == "cuda"
    dtype = getattr(torch, args.dtype)
    model = build_midsize_teacher(seed=0, width=args.unet_width, layers=args.layers)
    n_unet = count_params(model.network)
    torch.manual_seed(0)
    make_student(model, LoraSettings(rank=args.rank, dropout=0.0))
    model.network.eval()
    model.to(device=device, dtype=dtype)
    timers = Timers(model, cuda)
    prompts = [f"a red circle moving right {i}" for i in range(args.videos)]
    common = dict(frames=args.frames, height=args.height, width=args.width, guidance=args.guidance, seed=0)

    def run(mode: str, steps: int) -> dict[str, float]:
        timers.reset()
        if cuda:
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        if mode == "teacher":
            with teacher_mode(model.network):  # base weights, adapters off: the teacher as users run it
                out = sample_video(model, prompts, steps=steps, mode="teacher", **common)
        else:
            out = sample_video(model, prompts, steps=steps, mode="student", **common)
        total = time.perf_counter() - t0  # videos come back on the CPU, so this is synced
        cpu = time.process_time() - c0
        assert out.unet_calls == steps and torch.isfinite(out.videos).all()
        row = {"total": total, "cpu": cpu, **{k: timers.seconds[k] for k in ("unet", "vae", "text")},
               "unet_calls": timers.calls["unet"]}
        row["other"] = total - row["unet"] - row["vae"] - row["text"]
        return row

    # Warm-up: kernels, allocator, lazy imports.
    run("student", args.student_steps)
    run("teacher", 2)

    def median(mode: str, steps: int, repeats: int) -> dict[str, float]:
        runs = sorted((run(mode, steps) for _ in range(repeats)), key=lambda r: r["total"])
        return runs[len(runs) // 2]

    rows = [(f"teacher DDIM+CFG {args.teacher_steps} steps", median("teacher", args.teacher_steps, args.repeats)),
            (f"student {args.student_steps} steps (LoRA adapter)",
             median("student", args.student_steps, args.student_repeats))]
    if not args.no_merged:
        merge_lora(model.network)  # what `t2vturbo export` ships: LoRA folded into the weights
        run("student", args.student_steps)
        rows.append((f"student {args.student_steps} steps (LoRA merged)",
                     median("student", args.student_steps, args.student_repeats)))

    n = args.videos
    print(f"model: mid-size ModelScope architecture, random weights; UNet {n_unet / 1e6:.1f}M params "
          f"(widths {args.unet_width}/{2 * args.unet_width}/{4 * args.unet_width}, {args.layers} layers), "
          f"VAE {count_params(model.vae) / 1e6:.1f}M, text encoder {count_params(model.text_encoder) / 1e6:.1f}M, "
          f"LoRA rank {args.rank}")
    print(f"video: {args.frames} frames {args.height}x{args.width}, {n} per call; device {device}, {args.dtype}, "
          f"torch threads {torch.get_num_threads()}; load average {load_average()}")
    print(f"{'':40s} {'s/video':>8s} {'UNet':>8s} {'calls':>5s} {'s/call':>7s} {'VAE dec':>8s} {'text':>7s} "
          f"{'other':>7s} {'other %':>7s}")
    for name, r in rows:
        print(f"{name:40s} {r['total'] / n:8.2f} {r['unet'] / n:8.2f} {r['unet_calls']:5d} "
              f"{r['unet'] / r['unet_calls']:7.3f} {r['vae'] / n:8.3f} {r['text'] / n:7.3f} {r['other'] / n:7.3f} "
              f"{100 * r['other'] / r['total']:6.2f}%")
    teacher = rows[0][1]["total"]
    teacher_cpu = rows[0][1]["cpu"]
    for name, r in rows[1:]:
        extra = f"; process CPU time {teacher_cpu / r['cpu']:.1f}x" if not cuda else ""
        print(f"speed-up {name}: {teacher / r['total']:.1f}x wall (target >= 20x){extra}")
    worst = max(100 * r["other"] / r["total"] for _, r in rows)
    print(f"largest share outside UNet + VAE + text encoder: {worst:.2f}% (target <= 5%)")


if __name__ == "__main__":
    main()
