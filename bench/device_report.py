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
   own frames), with the recipe's options: bf16, gradient checkpointing, 8-bit Adam (bitsandbytes, CUDA).
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
import copy
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from midsize import TEXT_CONFIG as MID_TEXT  # noqa: E402
from midsize import UNET_CONFIG as MID_UNET  # noqa: E402
from midsize import VAE_CONFIG as MID_VAE  # noqa: E402
from midsize import count_params  # noqa: E402
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


def build_parts(size: str, seed: int = 0):
    """TeacherParts of the size's ModelScope-family model, random weights from ``seed``, frozen, eval."""
    from diffusers import AutoencoderKL, UNet3DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from t2vturbo.schedules import VPSchedule
    from t2vturbo.teachers import TeacherParts
    from t2vturbo.tiny.teacher import load_tiny_tokenizer

    cfg = SIZES[size]
    tokenizer = load_tiny_tokenizer()  # word-level; prompt length 77 as CLIP's
    tokenizer.model_max_length = cfg["text"]["max_position_embeddings"]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet3DConditionModel(**cfg["unet"])
        vae = AutoencoderKL(**cfg["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                                    bos_token_id=tokenizer.bos_token_id,
                                                    eos_token_id=tokenizer.eos_token_id, **cfg["text"]))
    for m in (unet, vae, text_encoder):
        m.requires_grad_(False).eval()
    return TeacherParts(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                        schedule=VPSchedule.standard(), name=f"{size}-random",
                        vae_scale=float(vae.config.scaling_factor))


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


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def current_rss_mb() -> float:
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    """Resident peak since the process started or since the last :meth:`Meter.reset_peak`."""
    peak = _status_mb("VmHWM")
    return peak if math.isfinite(peak) else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Meter:
    """Peak memory of this process above the baseline taken after the imports: the CUDA allocator's peak, else
    resident memory (VmHWM). ``reset_peak`` after setup makes the peak that of what follows alone (on Linux,
    ``/proc/self/clear_refs``), so building the models does not count as the training step's peak."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.base = current_rss_mb()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(device)

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def reset_peak(self) -> bool:
        """Forget the peak so far; False where the platform cannot (the peak then includes setup)."""
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
            return True
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            return True
        except OSError:
            return False

    def peak_mb(self) -> float:
        return torch.cuda.max_memory_allocated() / 2**20 if self.cuda else peak_rss_mb() - self.base


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
    parts = build_parts(args.size)
    torch.manual_seed(0)
    make_student(parts.unet, LoraSettings(rank=cfg["rank"], dropout=0.0))
    merge_lora(parts.unet)  # what export ships; LoRA B starts at zero, so the weights equal the base's
    parts.unet.eval()
    parts.to(device=device, dtype=dtype)
    if args.compile != "none":
        parts.unet = torch.compile(parts.unet, mode=None if args.compile == "default" else args.compile,
                                   dynamic=False)
    timers = Timers(parts, meter.cuda)
    common = dict(frames=frames, height=height, width=width, guidance=7.5)

    def run(mode, steps, prompts, seed=0):
        timers.reset()
        meter.sync()
        t0 = time.perf_counter()
        out = sample_video(parts, prompts, steps=steps, mode=mode, seed=seed, **common)
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
              "unet_params": count_params(parts.unet), "peak_mb": meter.peak_mb()}
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
    from t2vturbo.config import Recipe, RewardConfig

    frames, height, width = SIZES[args.size]["video"]
    recipe = Recipe()
    recipe.model.teacher = "bench"
    recipe.model.device = args.device
    recipe.model.dtype = args.dtype
    recipe.video.frames, recipe.video.height, recipe.video.width = frames, height, width
    recipe.lora.rank, recipe.lora.dropout = SIZES[args.size]["rank"], 0.1
    recipe.train.batch_size = 1
    recipe.train.num_threads = args.threads
    recipe.train.mixed_precision = {"float32": "no", "bfloat16": "bf16", "float16": "fp16"}[args.dtype]
    recipe.train.checkpoint_every = 10**6
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


def clips(args, steps: int):
    frames, height, width = SIZES[args.size]["video"]
    g = torch.Generator().manual_seed(1)
    for caption in bench_captions(steps):
        yield torch.rand(1, frames, 3, height, width, generator=g), [caption]


def task_distill(args) -> dict:
    import accelerate  # noqa: F401 - imported before the baseline in both variants
    import peft  # noqa: F401

    import t2vturbo.distill  # noqa: F401

    device = torch.device(args.device)
    meter = Meter(device)
    step, setup_mb, (unet_params, trained_params) = (distill_ours if args.variant == "ours" else distill_reference)(args, device)
    setup_peak = meter.peak_mb()
    step_only = meter.reset_peak()
    seconds, losses = [], []
    for i, (pixels, captions) in enumerate(clips(args, args.warmup + args.steps)):
        meter.sync()
        t0 = time.perf_counter()
        losses.append(step(pixels, captions))
        meter.sync()
        if i >= args.warmup:
            seconds.append(time.perf_counter() - t0)
    if not all(math.isfinite(v) for v in losses):
        raise RuntimeError(f"non-finite loss: {losses}")
    return {"s_per_step": statistics.median(seconds), "peak_mb": meter.peak_mb(), "setup_mb": setup_mb - meter.base,
            "unet_params": unet_params, "trained_params": trained_params, "losses": losses,
            "setup_peak_mb": setup_peak, "peak_is_steps_only": step_only}


def base_and_trained(unet) -> tuple[int, int]:
    """(frozen base parameters, trained parameters) of a student UNet."""
    trained = sum(p.numel() for p in unet.parameters() if p.requires_grad)
    return count_params(unet) - trained, trained


def distill_ours(args, device):
    """The product's own step: Distiller.training_step + backward + optimizer step (its loaders swapped)."""
    import t2vturbo.distill as distill

    dtype = getattr(torch, args.dtype)
    distill.load_teacher = lambda spec, device, dtype: build_parts(args.size).to(device=device, dtype=dtype)
    reward_dtype = getattr(torch, args.reward_dtype) if args.reward_dtype else dtype
    rewards = dict(build_rewards(args.size, device, reward_dtype))
    distill.load_reward = lambda name, dtype=None, **_: rewards[name]
    distill.make_stream = lambda *a, **k: None  # the bench feeds its own clips
    out = tempfile.mkdtemp(prefix="t2vturbo-report-")
    d = distill.Distiller(make_recipe(args), out, log=lambda _: None, progress=False)
    d.setup()
    if args.cache_text:  # train.cache_text, given the bench's own captions (its stream is its own)
        d.cache_text(bench_captions(args.warmup + args.steps))

    def step(pixels, captions):
        loss, _ = d.training_step(pixels, captions)
        d.apply_gradients(loss)
        d.step += 1
        return float(loss.detach())

    return step, current_rss_mb(), base_and_trained(d.unet)


def distill_reference(args, device):
    """The reference implementation's layout, emulated with the same maths: a second full UNet as teacher, the
    student's forward with grad first, the teacher's cond and uncond as two calls, the target, then each reward
    decoding its own frames (M random for the image reward, 8 strided for the video reward)."""
    from accelerate.utils import set_seed

    from t2vturbo.consistency import consistency_loss, guidance_embedding, lcm_guidance
    from t2vturbo.rewards import strided_frame_indices
    from t2vturbo.student import LoraSettings, make_student
    from t2vturbo.teachers import decode_latents

    recipe = make_recipe(args)
    r, dist = recipe, recipe.distill
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    set_seed(r.train.seed)
    parts = build_parts(args.size).to(device=device, dtype=dtype)
    rewards = build_rewards(args.size, device, dtype)
    teacher = copy.deepcopy(parts.unet)
    torch.manual_seed(r.train.seed)
    unet = make_student(parts.unet, LoraSettings(rank=r.lora.rank, dropout=r.lora.dropout), dist.guidance_embed_dim)
    params = [p for p in unet.parameters() if p.requires_grad]
    for p in params:
        p.data = p.data.float()
    unet.train()
    if args.optimizer == "adamw8bit":
        import bitsandbytes as bnb

        optimizer = bnb.optim.AdamW8bit(params, lr=r.train.learning_rate)
    else:
        optimizer = torch.optim.AdamW(params, lr=r.train.learning_rate, weight_decay=r.train.weight_decay)
    schedule = parts.schedule
    solver_t = schedule.solver_grid(dist.num_ddim_timesteps).to(device)
    uncond = parts.encode_text([""])
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)
    setup = current_rss_mb()
    counter = [0]

    def step(pixels, captions):
        gen = torch.Generator().manual_seed(1000 + counter[0])
        counter[0] += 1
        with torch.no_grad():
            latents = parts.encode_video(pixels.to(device))
            cond = parts.encode_text(captions)
        index = torch.randint(0, dist.num_ddim_timesteps, (1,), generator=gen).to(device)
        t_start = solver_t[index]
        t_end = schedule.solver_end(t_start, dist.skip, solver_t)
        noise = torch.randn(latents.shape, generator=gen).to(device, latents.dtype)
        x_t = schedule.add_noise(latents, noise, t_start)
        w = (dist.w_min + (dist.w_max - dist.w_min) * torch.rand((1,), generator=gen)).to(device)
        w_emb = guidance_embedding(w.cpu(), dist.guidance_embed_dim).to(device, latents.dtype)
        with autocast:  # 1. the student first: its activations live through everything below
            x0_s, _ = parts.denoise(x_t, t_start, cond, guidance_cond=w_emb, network=unet)
        pred = schedule.consistency_output(x_t.float(), x0_s.float(), t_start)
        with torch.no_grad():
            with autocast:  # 2. the teacher copy, cond and uncond as two calls
                x0_c, eps_c = parts.denoise(x_t, t_start, cond, network=teacher)
                x0_u, eps_u = parts.denoise(x_t, t_start, uncond, network=teacher)
            x_prev = schedule.step(lcm_guidance(x0_c.float(), x0_u.float(), w),
                                   lcm_guidance(eps_c.float(), eps_u.float(), w), t_end).to(x_t.dtype)
            with autocast:  # 3. the target from the student
                x0_t, _ = parts.denoise(x_prev, t_end, cond, guidance_cond=w_emb, network=unet)
            target = schedule.consistency_output(x_prev.float(), x0_t.float(), t_end)
        loss = consistency_loss(pred, target, dist.loss, dist.huber_c)
        f = pred.shape[2]
        for (_, model), beta in zip(rewards, (IMAGE_BETA, VIDEO_BETA), strict=True):
            idx = (sorted(torch.randperm(f, generator=gen)[:IMAGE_FRAMES].tolist()) if model.kind == "image"
                   else strided_frame_indices(f, VIDEO_FRAMES))
            frames = decode_latents(parts, pred.to(dtype), idx)
            with autocast:
                loss = loss - beta * model(frames, captions).float().mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, r.train.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return float(loss.detach())

    return step, setup, base_and_trained(unet)


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
    print("RESULT " + json.dumps(result), flush=True)


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
    env = dict(os.environ, TOKENIZERS_PARALLELISM="false")
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
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
        if proc.returncode or not lines:
            reason = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
            print(f"{label(run)} {run['task']}: failed ({reason})", file=sys.stderr)
            report["failed"].append({**run, "reason": reason})
            continue
        result = json.loads(lines[-1][len("RESULT "):])
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
