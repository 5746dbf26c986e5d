"""One device report: sampling, a distillation step with both rewards, and scoring, at small / mid / full size.

Every model is built from its real architecture with random weights (no downloads):

- ``full``: ModelScope's UNet3DConditionModel (320/640/1280/1280, 1.41 B), its AutoencoderKL (SD VAE) and the
  23-layer 1024-wide CLIP text encoder; HPSv2.1 = open_clip ViT-H-14; ViCLIP = ViT-L/14 + its 12-layer text
  tower; the Wan2.1 1.3B transformer (sampling rows); 16 x 256 x 256 clips (Wan: 17 x 256 x 256), LoRA rank 32.
- ``mid``: the bench models of bench/midsize.py (UNet 128/256/512, 113 M), open_clip ViT-B-32, a ViT-B/32-size
  ViCLIP; 8 x 64 x 64 training clips, 8 x 128 x 128 sampled videos (16 x 16 latents), rank 16.
- ``small``: the same families at toy width (a few minutes on a 2-core CPU; what the test runs).

Each measurement runs in a fresh subprocess, so peaks do not mix:

1. ``sample``: the 4-step student (LoRA merged, as exported) against the 50-step CFG teacher, seconds per video
   and where the time goes (UNet / VAE decode / text encoder / the rest), per dtype; on CUDA also with
   ``torch.compile`` and with CUDA graphs (``mode="reduce-overhead"``); and several prompts in one denoiser call
   against one prompt at a time (videos/s).
2. ``distill``: one training step at batch 1 with both rewards: peak memory (``torch.cuda.max_memory_allocated``
   / RSS above the imports) and seconds per step, t2vturbo's Distiller against the reference implementation's
   layout (a second UNet copy, cond and uncond as two calls, student forward first, each reward decoding its
   own frames), with the recipe's options: bf16, gradient checkpointing, 8-bit Adam (bitsandbytes, CUDA). Both
   steps are bench/distill_steps.py's, the ones bench/distill_memory.py times too.
3. ``score``: videos/s of the image reward (HPSv2.1 architecture) and the video reward (ViCLIP), model alone
   batched against one video at a time, and ``score_videos`` end to end on written mp4 files.

It writes ``--out`` (JSON: every row, the machine, the versions) and prints one markdown table of ratios.

    python bench/device_report.py --device cpu --size small --out report.json     # this CPU: ~1 min
    python bench/device_report.py --device cpu --size mid --out mid.json          # this CPU: ~7 min
    python bench/device_report.py --device cuda --size full --out full.json       # one GPU (H100/H200 class)

The full-size CUDA run builds ~4 B parameters of random models in each of its ~14 processes; on an H200 plan
for about 8 minutes (an estimate: no GPU has been lent to this project yet); ``--only sample,distill``,
``--dtypes bfloat16`` and ``--no-compile`` shorten it. Step times of separate processes drift by 10-20% on a
shared machine; for a time ratio you quote, run the two child processes alternately, A B A B (the
README's Benchmarks section shows the command).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from distill_steps import ReferenceStep, bench_recipe, our_step  # noqa: E402
from measure import Meter, current_rss_mb, print_result, random_clips, run_child, timed_steps  # noqa: E402
from midsize import TEXT_CONFIG as MID_TEXT  # noqa: E402
from midsize import UNET_CONFIG as MID_UNET  # noqa: E402
from midsize import VAE_CONFIG as MID_VAE  # noqa: E402
from midsize import build_teacher, count_params  # noqa: E402
from sample_speed import Timers  # noqa: E402

# --------------------------------------------------------------------------------------------------- the sizes

MS_UNET = dict(sample_size=32, in_channels=4, out_channels=4,
               down_block_types=("CrossAttnDownBlock3D",) * 3 + ("DownBlock3D",),
               up_block_types=("UpBlock3D",) + ("CrossAttnUpBlock3D",) * 3,
               block_out_channels=(320, 640, 1280, 1280), layers_per_block=2, norm_num_groups=32,
               cross_attention_dim=1024, attention_head_dim=64)
SD_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
              up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
              latent_channels=4, norm_num_groups=32, sample_size=256, scaling_factor=0.18215)
MS_TEXT = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
               max_position_embeddings=77, projection_dim=1024, hidden_act="gelu")
WAN_1_3B = dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16, out_channels=16,
                text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30, cross_attn_norm=True, eps=1e-6,
                rope_max_seq_len=1024)

SIZES = {
    "small": dict(
        unet=dict(MID_UNET, block_out_channels=(32, 64, 128), layers_per_block=1, cross_attention_dim=64,
                  norm_num_groups=16),
        vae=dict(MID_VAE, block_out_channels=(16, 16, 32, 32)),
        text=dict(MID_TEXT, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                  projection_dim=64),
        image_reward={"embed_dim": 32, "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32,
                                                      "patch_size": 32},
                      "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2}},
        video_reward=dict(vision_width=64, vision_layers=2, vision_heads=2, text_width=64, text_layers=2,
                          text_heads=2, embed_dim=32, patch_size=32),
        video=(8, 64, 64), rank=4, wan=None, teacher_steps=50,
    ),
    "mid": dict(
        unet=dict(MID_UNET, block_out_channels=(128, 256, 512)),
        vae=MID_VAE, text=MID_TEXT, image_reward="ViT-B-32",
        video_reward=dict(vision_width=768, vision_layers=12, vision_heads=12, patch_size=32, text_width=512,
                          text_layers=12, text_heads=8, embed_dim=512),
        video=(8, 64, 64), sample_video=(8, 128, 128), rank=16, wan=None, teacher_steps=50,
    ),
    "full": dict(unet=MS_UNET, vae=SD_VAE, text=MS_TEXT, image_reward="ViT-H-14", video_reward={},
                 video=(16, 256, 256), rank=32, wan=dict(WAN_1_3B), wan_video=(17, 256, 256), teacher_steps=50),
}
IMAGE_FRAMES, VIDEO_FRAMES = 5, 8  # the reference code's M and ViCLIP's frame count
IMAGE_BETA, VIDEO_BETA = 2.0, 3.0  # the paper's ModelScope weights


def build_model(size: str, seed: int = 0):
    """The size's ModelScope-family model (a UNet3DTeacher), random weights from ``seed``, frozen, eval."""
    cfg = SIZES[size]
    return build_teacher(cfg["unet"], cfg["vae"], cfg["text"], seed=seed, name=f"{size}-random")


def build_rewards(size: str, device, dtype=torch.float32) -> list:
    """[(name, model)]: the HPSv2.1 architecture (open_clip CLIP) and ViCLIP, random weights, frozen."""
    from open_clip.model import CLIP

    from t2vturbo.rewards.clip import OpenClipReward, open_clip_config
    from t2vturbo.rewards.preprocess import hps_pixels
    from t2vturbo.rewards.viclip import ViCLIP, ViCLIPConfig

    cfg = SIZES[size]
    image_cfg = cfg["image_reward"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        clip = CLIP(**(open_clip_config(image_cfg) if isinstance(image_cfg, str) else open_clip_config(model_cfg=image_cfg)))
        viclip = ViCLIP(ViCLIPConfig(**cfg["video_reward"]))
        for name, p in viclip.named_parameters():  # the module leaves its projections / embeddings at zero
            if name.endswith(("proj", "projection", "embedding")):
                torch.nn.init.normal_(p, std=p.shape[-1] ** -0.5)
    out = []
    for name, model in (("hpsv2.1", OpenClipReward(clip, hps_pixels)), ("viclip", viclip)):
        model.requires_grad_(False).eval().to(device=device, dtype=dtype)
        out.append((name, model))
    return out


# ------------------------------------------------------------------------------------------------- measurement


def _median_time(fn, repeats: int, sync) -> float:
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


# ---------------------------------------------------------------------------------------------------- sampling


def task_sample(args) -> dict:
    """Teacher 50 steps + CFG and the merged 4-step student, per dtype / compile setting; batching ratio."""
    from t2vturbo.sampling import sample_video
    from t2vturbo.student import LoraSettings, make_student, merge_lora

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    meter = Meter(device)
    cfg = SIZES[args.size]
    frames, height, width = cfg.get("sample_video", cfg["video"])
    model = build_model(args.size)
    torch.manual_seed(0)
    make_student(model, LoraSettings(rank=cfg["rank"], dropout=0.0))
    merge_lora(model.network)  # what export ships; LoRA B starts at zero, so the weights equal the base's
    model.network.eval()
    model.to(device=device, dtype=dtype)
    if args.compile != "none":  # the bench's model is a UNet3DTeacher: its network is its ``unet`` field
        model.unet = torch.compile(model.unet, mode=None if args.compile == "default" else args.compile,
                                   dynamic=False)
    timers = Timers(model, meter.cuda)
    common = dict(frames=frames, height=height, width=width, guidance=7.5)

    def run(mode, steps, prompts, seed=0):
        timers.reset()
        meter.sync()
        t0 = time.perf_counter()
        out = sample_video(model, prompts, steps=steps, mode=mode, seed=seed, **common)
        total = time.perf_counter() - t0
        if not torch.isfinite(out.videos).all():
            raise RuntimeError(f"non-finite video in {mode} sampling")
        n = len(prompts)
        row = {"s_per_video": total / n, **{f"{k}_s": timers.seconds[k] / n for k in ("unet", "vae", "text")},
               "unet_calls": timers.calls["unet"]}
        row["other_s"] = row["s_per_video"] - row["unet_s"] - row["vae_s"] - row["text_s"]
        row["other_share"] = row["other_s"] / row["s_per_video"]
        return row

    one = ["a red circle moving right"]
    t_warm = time.perf_counter()
    run("student", 4, one)  # warm-up (and compilation) of both modes
    run("teacher", 2, one)
    warmup_s = time.perf_counter() - t_warm
    teacher_steps = args.teacher_steps or cfg["teacher_steps"]
    teacher = min((run("teacher", teacher_steps, one) for _ in range(args.teacher_repeats)),
                  key=lambda r: r["s_per_video"])
    student = min((run("student", 4, one) for _ in range(args.repeats)), key=lambda r: r["s_per_video"])
    batch = [f"a red circle moving right {i}" for i in range(args.sample_batch)]
    batched = min((run("student", 4, batch) for _ in range(args.repeats)), key=lambda r: r["s_per_video"])
    result = {"teacher": teacher, "student": student, "student_batched": batched, "batch": args.sample_batch,
              "teacher_steps": teacher_steps, "speedup": teacher["s_per_video"] / student["s_per_video"],
              "batching_gain": student["s_per_video"] / batched["s_per_video"], "warmup_s": warmup_s,
              "unet_params": count_params(model.network), "peak_mb": meter.peak_mb()}
    if cfg.get("wan") and args.wan:
        result["wan"] = wan_sampling(args, device, dtype, meter)
    return result


def wan_sampling(args, device, dtype, meter) -> dict:
    """The Wan2.1 1.3B transformer alone: s per 4-step student video against a 50-step CFG teacher (UNet calls
    only; text states random, VAE not built)."""
    from diffusers import WanTransformer3DModel

    cfg = SIZES[args.size]
    f, h, w = cfg["wan_video"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = WanTransformer3DModel(**cfg["wan"]).eval().requires_grad_(False).to(device=device, dtype=dtype)
    x = torch.randn(1, 16, (f - 1) // 4 + 1, h // 8, w // 8, device=device, dtype=dtype)
    text = torch.randn(1, 512, 4096, device=device, dtype=dtype)
    t = torch.tensor([500], device=device)

    def call(batch):
        model(torch.cat([x] * batch), t.expand(batch), torch.cat([text] * batch), return_dict=False)

    with torch.no_grad():
        call(2)
        per_student = _median_time(lambda: call(1), args.repeats, meter.sync)
        per_teacher = _median_time(lambda: call(2), args.repeats, meter.sync)
    return {"params": count_params(model), "student_s": 4 * per_student,
            "teacher_s": cfg["teacher_steps"] * per_teacher,
            "speedup": cfg["teacher_steps"] * per_teacher / (4 * per_student)}


# ------------------------------------------------------------------------------------------------ distillation


def make_recipe(args):
    from t2vturbo.config import RewardConfig

    size = SIZES[args.size]
    recipe = bench_recipe("bench", args.device, args.dtype, size["video"], size["rank"], 0.1, threads=args.threads)
    recipe.train.gradient_checkpointing = args.checkpointing
    recipe.train.reward_checkpointing = args.reward_checkpointing
    recipe.train.split_reward_backward = args.split
    recipe.train.decode_checkpointing = args.decode_checkpointing
    recipe.train.optimizer = args.optimizer
    reward_dtype = args.reward_dtype or args.dtype
    recipe.rewards = [RewardConfig(name="hpsv2.1", weight=IMAGE_BETA, frames=IMAGE_FRAMES, dtype=reward_dtype),
                      RewardConfig(name="viclip", weight=VIDEO_BETA, dtype=reward_dtype)]
    return recipe


def bench_captions(steps: int) -> list[str]:
    return [f"a red circle moving right {i}" for i in range(steps)]


def task_distill(args) -> dict:
    import accelerate  # noqa: F401 - imported before the baseline in both variants
    import peft  # noqa: F401

    import t2vturbo.distill  # noqa: F401

    device = torch.device(args.device)
    meter = Meter(device)
    step, setup_mb, (unet_params, trained_params) = (distill_ours if args.variant == "ours" else distill_reference)(args, device)
    setup_peak = meter.peak_mb()
    step_only = meter.reset_peak()
    frames, height, width = SIZES[args.size]["video"]
    clips = random_clips([[c] for c in bench_captions(args.warmup + args.steps)], frames, height, width)
    timed = timed_steps(step, clips, args.warmup, meter.sync)
    return {"s_per_step": statistics.median(timed["seconds"]), "peak_mb": meter.peak_mb(),
            "setup_mb": setup_mb - meter.base, "unet_params": unet_params, "trained_params": trained_params,
            "losses": timed["losses"], "setup_peak_mb": setup_peak, "peak_is_steps_only": step_only}


def base_and_trained(network) -> tuple[int, int]:
    """(frozen base parameters, trained parameters) of a student network."""
    trained = sum(p.numel() for p in network.parameters() if p.requires_grad)
    return count_params(network) - trained, trained


def distill_ours(args, device):
    """The product's own step (bench/distill_steps.py): Distiller.training_step + backward + optimizer step, the
    bench's model and rewards given to the Distiller as its loaders."""
    dtype = getattr(torch, args.dtype)
    reward_dtype = getattr(torch, args.reward_dtype) if args.reward_dtype else dtype
    rewards = dict(build_rewards(args.size, device, reward_dtype))
    d, step = our_step(make_recipe(args), tempfile.mkdtemp(prefix="t2vturbo-report-"),
                       lambda: build_model(args.size), rewards)
    if args.cache_text:  # train.cache_text, given the bench's own captions (its stream is its own)
        d.cache_text(bench_captions(args.warmup + args.steps))
    return step, current_rss_mb(), base_and_trained(d.network)


def distill_reference(args, device):
    """The reference implementation's layout (bench/distill_steps.py), with the same maths: a second full UNet as
    teacher, the student's forward with grad first, the teacher's cond and uncond as two calls, the target, then
    each reward decoding its own frames (M random for the image reward, 8 strided for the video reward)."""
    recipe = make_recipe(args)
    dtype = getattr(torch, args.dtype)
    model = build_model(args.size).to(device=device, dtype=dtype)
    rewards = dict(build_rewards(args.size, device, dtype))
    step = ReferenceStep(recipe, model, [(rc, rewards[rc.name]) for rc in recipe.rewards])
    return step, current_rss_mb(), base_and_trained(step.network)


# ----------------------------------------------------------------------------------------------------- scoring


def task_score(args) -> dict:
    """Videos/s per reward: the model alone, one video per call against batches; score_videos end to end."""
    from t2vturbo.score import score_videos
    from t2vturbo.video import write_prompt_sidecar, write_video

    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    meter = Meter(device)
    frames, height, width = SIZES[args.size]["video"]
    rewards = build_rewards(args.size, device, dtype)
    n, b = args.score_videos, args.score_batch
    g = torch.Generator().manual_seed(3)
    videos = torch.rand(n, frames, 3, height, width, generator=g)
    prompts = [f"a red circle moving right {i}" for i in range(n)]
    result = {}
    with tempfile.TemporaryDirectory() as folder:
        for i in range(n):
            path = write_video(videos[i], Path(folder) / f"v{i}.mp4", fps=8)
            write_prompt_sidecar(path, prompts[i])
        for name, model in rewards:
            need = IMAGE_FRAMES if model.kind == "image" else VIDEO_FRAMES
            sel = videos[:, torch.linspace(0, frames - 1, need).round().long()].to(device)

            def forward(lo, hi, model=model, sel=sel):
                with torch.no_grad():
                    model(sel[lo:hi].to(dtype), prompts[lo:hi])

            forward(0, b)
            one = _median_time(lambda forward=forward: [forward(i, i + 1) for i in range(n)], 1, meter.sync)
            batched = _median_time(lambda forward=forward: [forward(i, i + b) for i in range(0, n, b)], 1, meter.sync)
            ends = {}
            for label, batch in (("one", 1), ("batched", b)):
                t0 = time.perf_counter()
                report = score_videos([folder], [(name, model)], batch_size=batch, device=device, dtype=dtype,
                                      max_frames=IMAGE_FRAMES)
                ends[label] = n / (time.perf_counter() - t0)
                if len(report.videos) != n:
                    raise RuntimeError(f"score_videos scored {len(report.videos)} of {n} videos: {report.failures}")
            result[name] = {"model_videos_per_s_one": n / one, "model_videos_per_s_batched": n / batched,
                            "model_batching_gain": one / batched, "e2e_videos_per_s_one": ends["one"],
                            "e2e_videos_per_s_batched": ends["batched"],
                            "e2e_batching_gain": ends["batched"] / ends["one"]}
    result["peak_mb"] = meter.peak_mb()
    return result


# -------------------------------------------------------------------------------------------------- the driver

TASKS = {"sample": task_sample, "distill": task_distill, "score": task_score}


def child(args) -> None:
    if args.threads:
        torch.set_num_threads(args.threads)
    result = TASKS[args.task](args)
    result.update(task=args.task, variant=args.variant, dtype=args.dtype, threads=torch.get_num_threads())
    print_result(result)


def plan(args) -> list[dict]:
    """The child runs of a report: (task, variant, options) in order."""
    cuda = args.device.startswith("cuda")
    dtypes = args.dtypes.split(",") if args.dtypes else (["float32", "bfloat16", "float16"] if cuda else ["float32"])
    only = set(args.only.split(",")) if args.only else set(TASKS)
    runs = []
    if "sample" in only:
        for dt in dtypes:
            runs.append(dict(task="sample", variant="eager", dtype=dt, compile="none"))
        if cuda and not args.no_compile:
            best = "bfloat16" if "bfloat16" in dtypes else dtypes[0]
            runs.append(dict(task="sample", variant="compile", dtype=best, compile="default"))
            runs.append(dict(task="sample", variant="cuda-graphs", dtype=best, compile="reduce-overhead"))
    if "distill" in only:
        train_dtypes = [d for d in dtypes if d != "float16"] or ["float32"]  # fp16 base needs loss scaling: not offered
        for dt in train_dtypes:
            for variant in ("ours", "reference"):
                runs.append(dict(task="distill", variant=variant, dtype=dt, checkpointing=False, optimizer="adamw"))
        last = train_dtypes[-1]
        runs.append(dict(task="distill", variant="ours", dtype=last, checkpointing=False, optimizer="adamw",
                         reward_checkpointing=False))
        runs.append(dict(task="distill", variant="ours", dtype=last, checkpointing=True, optimizer="adamw"))
        runs.append(dict(task="distill", variant="ours", dtype=last, checkpointing=True, optimizer="adamw",
                         split=True))
        if last == "float32":  # the frozen rewards' weights in bf16 (rewards[].dtype), nothing recomputed
            runs.append(dict(task="distill", variant="ours", dtype=last, checkpointing=False, optimizer="adamw",
                             reward_checkpointing=False, reward_dtype="bfloat16"))
        # the text encoders freed after encoding the captions once (train.cache_text), and the reward frames
        # decoded again in the backward (train.decode_checkpointing; the reward models are not rerun)
        runs.append(dict(task="distill", variant="ours", dtype=last, checkpointing=False, optimizer="adamw",
                         reward_checkpointing=False, cache_text=True, decode_checkpointing=True))
        if cuda:
            runs.append(dict(task="distill", variant="ours", dtype=last, checkpointing=True, optimizer="adamw8bit"))
    if "score" in only:
        runs.append(dict(task="score", variant="batched", dtype=dtypes[-1] if cuda else "float32"))
    return runs


def label(run: dict) -> str:
    extra = []
    if run.get("reward_checkpointing") is False:
        extra.append("no reward checkpointing")
    if run.get("split"):
        extra.append("split reward backward")
    if run.get("reward_dtype"):
        extra.append(f"rewards in {run['reward_dtype']}")
    if run.get("cache_text"):
        extra.append("text cached")
    if run.get("decode_checkpointing"):
        extra.append("decode checkpointing")
    if run.get("checkpointing"):
        extra.append("checkpointing")
    if run.get("optimizer") == "adamw8bit":
        extra.append("8-bit Adam")
    if run.get("compile", "none") != "none":
        extra.append({"default": "torch.compile", "reduce-overhead": "CUDA graphs"}[run["compile"]])
    return f"{run['variant']} {run['dtype']}" + (f" + {' + '.join(extra)}" if extra else "")


def markdown(report: dict) -> str:
    """One table of the report's ratios (and the absolute figures beside them)."""
    rows = ["| measurement | value | ratio | target |", "|---|---:|---:|---|"]
    for r in report["runs"]:
        if r["task"] == "sample":
            name = label(r)
            rows.append(f"| sample {name}: teacher {r['teacher_steps']} steps + CFG / student 4 steps (s/video) | "
                        f"{r['teacher']['s_per_video']:.3f} / {r['student']['s_per_video']:.3f} | "
                        f"{r['speedup']:.1f}x | >= 20x |")
            worst = max(r["teacher"]["other_share"], r["student"]["other_share"])
            rows.append(f"| sample {name}: time outside UNet / VAE / text encoder | "
                        f"{100 * worst:.1f}% | | <= 5% |")
            rows.append(f"| sample {name}: {r['batch']} prompts per call / one at a time (videos/s) | "
                        f"{1 / r['student_batched']['s_per_video']:.2f} / {1 / r['student']['s_per_video']:.2f} | "
                        f"{r['batching_gain']:.2f}x | > 1x |")
            if "wan" in r:
                w = r["wan"]
                rows.append(f"| Wan2.1 1.3B transformer: teacher 50 + CFG / student 4 (s/video, calls only) | "
                            f"{w['teacher_s']:.2f} / {w['student_s']:.2f} | {w['speedup']:.1f}x | >= 20x |")
    dist = [r for r in report["runs"] if r["task"] == "distill"]
    for ours in dist:
        if ours["variant"] != "ours":
            continue
        ref = next((r for r in dist if r["variant"] == "reference" and r["dtype"] == ours["dtype"]), None)
        if ref is None:
            continue
        rows.append(f"| distill {label(ours)} vs reference: peak memory (MiB) | "
                    f"{ours['peak_mb']:.0f} / {ref['peak_mb']:.0f} | {ours['peak_mb'] / ref['peak_mb']:.2f}x | <= 0.7x |")
        rows.append(f"| distill {label(ours)} vs reference: s/step | "
                    f"{ours['s_per_step']:.2f} / {ref['s_per_step']:.2f} | "
                    f"{ours['s_per_step'] / ref['s_per_step']:.2f}x | <= 1.0x |")
    for r in report["runs"]:
        if r["task"] != "score":
            continue
        for name in ("hpsv2.1", "viclip"):
            s = r[name]
            rows.append(f"| score {name}, model alone: batched / one at a time (videos/s) | "
                        f"{s['model_videos_per_s_batched']:.1f} / {s['model_videos_per_s_one']:.1f} | "
                        f"{s['model_batching_gain']:.2f}x | |")
            rows.append(f"| score {name}, end to end (mp4 files): batched / one at a time (videos/s) | "
                        f"{s['e2e_videos_per_s_batched']:.1f} / {s['e2e_videos_per_s_one']:.1f} | "
                        f"{s['e2e_batching_gain']:.2f}x | |")
    return "\n".join(rows)


def machine() -> dict:
    info = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
            "cpus": os.cpu_count()}
    with contextlib.suppress(Exception):
        import diffusers

        info["diffusers"] = diffusers.__version__
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda (cuda:N)")
    ap.add_argument("--size", choices=sorted(SIZES), default="small")
    ap.add_argument("--out", type=Path, default=Path("device_report.json"))
    ap.add_argument("--only", default="", help="comma list of sample,distill,score (default all)")
    ap.add_argument("--dtypes", default="", help="comma list (default: float32 on CPU; float32,bfloat16,float16 on CUDA)")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile / CUDA graph rows (CUDA)")
    ap.add_argument("--no-wan", dest="wan", action="store_false", help="skip the Wan2.1 rows (full size)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--repeats", type=int, default=2, help="timed student runs / steps (best or median)")
    ap.add_argument("--teacher-repeats", type=int, default=1)
    ap.add_argument("--teacher-steps", type=int, default=0, help="teacher DDIM steps (default 50)")
    ap.add_argument("--sample-batch", type=int, default=4, help="prompts per call in the batching row")
    ap.add_argument("--steps", type=int, default=3, help="timed distillation steps (median)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed distillation steps first")
    ap.add_argument("--score-videos", type=int, default=8)
    ap.add_argument("--score-batch", type=int, default=4)
    # one child run (internal)
    ap.add_argument("--task", choices=sorted(TASKS), help=argparse.SUPPRESS)
    ap.add_argument("--variant", default="", help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default="float32", help=argparse.SUPPRESS)
    ap.add_argument("--compile", default="none", help=argparse.SUPPRESS)
    ap.add_argument("--checkpointing", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--optimizer", default="adamw", help=argparse.SUPPRESS)
    ap.add_argument("--no-reward-checkpointing", dest="reward_checkpointing", action="store_false",
                    help=argparse.SUPPRESS)
    ap.add_argument("--split", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--reward-dtype", default="", help=argparse.SUPPRESS)
    ap.add_argument("--cache-text", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--decode-checkpointing", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.task:
        child(args)
        return
    if args.size == "full" and not args.device.startswith("cuda"):
        print("note: --size full on a CPU takes hours (1.4 B UNet, ViT-H-14); it is meant for --device cuda",
              file=sys.stderr)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device here; use --device cpu")

    common = [sys.executable, str(Path(__file__).resolve()), "--device", args.device, "--size", args.size,
              "--threads", str(args.threads), "--repeats", str(args.repeats), "--teacher-repeats",
              str(args.teacher_repeats), "--teacher-steps", str(args.teacher_steps), "--sample-batch",
              str(args.sample_batch), "--steps", str(args.steps), "--warmup", str(args.warmup), "--score-videos",
              str(args.score_videos), "--score-batch", str(args.score_batch)] + ([] if args.wan else ["--no-wan"])
    report = {"size": args.size, "device": args.device, "machine": machine(), "runs": [], "failed": []}
    t_all = time.perf_counter()
    for run in plan(args):
        cmd = common + ["--task", run["task"], "--variant", run["variant"], "--dtype", run["dtype"],
                        "--compile", run.get("compile", "none"), "--optimizer", run.get("optimizer", "adamw")]
        cmd += ["--checkpointing"] if run.get("checkpointing") else []
        cmd += ["--no-reward-checkpointing"] if run.get("reward_checkpointing") is False else []
        cmd += ["--split"] if run.get("split") else []
        cmd += ["--reward-dtype", run["reward_dtype"]] if run.get("reward_dtype") else []
        cmd += ["--cache-text"] if run.get("cache_text") else []
        cmd += ["--decode-checkpointing"] if run.get("decode_checkpointing") else []
        t0 = time.perf_counter()
        result, proc = run_child(cmd)
        if result is None:
            reason = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            print(f"{label(run)} {run['task']}: failed ({reason})", file=sys.stderr)
            report["failed"].append({**run, "reason": reason})
            continue
        result.update({k: v for k, v in run.items() if k not in result}, wall_s=time.perf_counter() - t0)
        report["runs"].append(result)
        print(f"{run['task']:8s} {label(run):40s} done in {result['wall_s']:.0f}s", file=sys.stderr, flush=True)
    report["wall_s"] = time.perf_counter() - t_all
    report["table"] = markdown(report)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(args.out)
    print(f"device report: size {args.size}, {args.device} ({report['machine'].get('gpu', platform.processor() or 'cpu')}), "
          f"{report['wall_s']:.0f} s; written to {args.out}")
    print(report["table"])
    if report["failed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
